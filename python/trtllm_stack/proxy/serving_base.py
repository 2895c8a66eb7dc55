"""What chat and text completions share: request checks, engine limits, the generation
loop with disconnect handling, usage and logprobs formatting.

Flow of one request (both endpoints): validate -> prompt token ids -> EngineRequest ->
(stream: SSE generator | non-stream: aggregate) reading the engine's :class:`ChunkStream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from trtllm_stack.proxy.engine import (
    ChunkStream,
    Engine,
    EngineError,
    EngineLimits,
    EngineSilent,
    EngineUnavailable,
)
from trtllm_stack.proxy.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ProxyError,
    json_response,
)
from trtllm_stack.proxy.guided import Guide, request_guide
from trtllm_stack.proxy.metrics import ProxyMetrics
from trtllm_stack.proxy.protocol import _SamplingRequest
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.proxy.sse import DONE, event
from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.text.special_tokens import LiteralText
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest

log = logging.getLogger("trtllm_stack.proxy")

T = TypeVar("T")

# Limits used when the engine does not publish its own (older model repositories).
_FALLBACK_SEQ_LEN = 32768


class ClientGone(Exception):
    """The HTTP client disconnected before the response was ready."""


def backend_error(exc: BaseException) -> ProxyError:
    """Map what the pump raised to the error the client sees."""
    if isinstance(exc, EngineUnavailable):
        return BackendUnavailable(f"the inference backend is unavailable: {exc}")
    if isinstance(exc, EngineSilent):
        return BackendTimeout(str(exc))
    if isinstance(exc, EngineError):
        return BackendFailed(f"the inference backend failed the request: {exc}")
    if isinstance(exc, ProxyError):
        return exc
    log.error("unexpected backend failure: %r", exc, exc_info=exc)
    return BackendFailed("the inference backend failed the request")


class ServingContext:
    """Process-wide state of the proxy: one engine client, tokenizer, metrics, limits."""

    def __init__(
        self,
        settings: ProxySettings,
        engine: Engine,
        tokenizer: Any,
        metrics: ProxyMetrics,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.in_flight = 0
        self._limits: EngineLimits | None = None
        self.end_id: int = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.end_id
        # Qwen3 ends chat turns with <|im_end|> (end_id) but may also emit <|endoftext|>.
        extra = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.extra_stop_ids: tuple[tuple[int, ...], ...] = (
            ((int(extra),),) if isinstance(extra, int) and extra != self.end_id else ()
        )
        self._backend = tokenizer.backend_tokenizer
        self.literal = LiteralText(tokenizer)

    def encode(self, text: str) -> list[int]:
        try:
            ids: list[int] = self._backend.encode(text, add_special_tokens=False).ids
        except (TypeError, ValueError, UnicodeError):
            # Lone surrogates ("\ud800" in JSON) are valid JSON but not Unicode text.
            raise InvalidRequest(
                "the text is not valid Unicode (it contains a lone surrogate)"
            ) from None
        return ids

    async def limits(self) -> EngineLimits:
        if self._limits is None:
            try:
                limits = await self.engine.limits()
            except EngineUnavailable as exc:
                raise BackendUnavailable(f"the inference backend is unavailable: {exc}") from None
            except EngineError as exc:
                raise BackendFailed(f"cannot read the engine limits: {exc}") from None
            self._limits = limits
        return self._limits

    # -- admission ------------------------------------------------------------------

    def check_model(self, model: str) -> None:
        if model != self.settings.served_model_name:
            raise ModelNotFound(
                f"model '{model}' does not exist; this server serves "
                f"'{self.settings.served_model_name}'",
                param="model",
            )

    def admit(self) -> Lease:
        limit = self.settings.max_in_flight
        if limit and self.in_flight >= limit:
            raise Overloaded(
                f"the server is at its limit of {limit} requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        return Lease(self)

    # -- request -> EngineRequest ------------------------------------------------------

    async def engine_request(
        self,
        body: _SamplingRequest,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int | None,
        want_log_probs: bool,
        chat: bool,
        tool_guide: Guide | None = None,
    ) -> EngineRequest:
        limits = await self.limits()
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if limits.max_input_len is not None and n_prompt > limits.max_input_len:
            raise InvalidRequest(
                f"the prompt has {n_prompt} tokens; this engine accepts at most "
                f"{limits.max_input_len} input tokens",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        seq_len = limits.max_seq_len or _FALLBACK_SEQ_LEN
        room = seq_len - n_prompt
        param = "max_completion_tokens" if chat else "max_tokens"
        if room < 1:
            raise InvalidRequest(
                f"the prompt has {n_prompt} tokens, which leaves no room for output in this "
                f"engine's {seq_len}-token context",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = room
            if self.settings.default_max_tokens is not None:
                max_tokens = min(max_tokens, self.settings.default_max_tokens)
        elif max_tokens > room:
            raise InvalidRequest(
                f"the prompt has {n_prompt} tokens and {max_tokens} more were requested, "
                f"but this engine's context is {seq_len} tokens; ask for at most {room}",
                param=param,
                code="context_length_exceeded",
            )
        temperature = body.temperature
        top_k = body.top_k if body.top_k and body.top_k > 0 else None
        if temperature == 0.0:
            # Greedy: TensorRT-LLM expresses it as top_k=1 (temperature 0 is not valid there).
            temperature, top_k = None, 1
        guide = request_guide(body)
        if tool_guide is not None:
            if guide is not None:
                raise InvalidRequest(
                    "tool_choice required/named is enforced by a guide; it cannot be combined"
                    " with another output constraint",
                    param="tool_choice",
                )
            guide = tool_guide
        # ignore_eos: end_id -1, as TensorRT-LLM's own executor worker sends it
        # (tensorrt_llm/executor/worker.py: end_id=-1 if sampling_params.ignore_eos); the
        # extra EOS-like stop ids go too.
        ignore_eos = body.ignore_eos
        return EngineRequest(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            end_id=-1 if ignore_eos else self.end_id,
            pad_id=self.pad_id,
            streaming=True,
            temperature=temperature,
            top_p=body.top_p,
            top_k=top_k,
            seed=body.seed,
            repetition_penalty=body.repetition_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            min_tokens=body.min_tokens or None,
            stop_token_sequences=self.extra_stop_ids if chat and not ignore_eos else (),
            return_log_probs=want_log_probs,
            guide_type=guide.type if guide is not None else None,
            guide=guide.text if guide is not None else None,
        )

    async def start(self, req: EngineRequest, request_id: str) -> ChunkStream:
        return await self.engine.open(req, request_id, timeout=self.settings.backend_timeout)

    def finish_reason(self, req: EngineRequest, completion_tokens: int, last_token: int) -> str:
        if completion_tokens >= req.max_tokens and last_token != req.end_id:
            return "length"
        return "stop"


class Lease:
    """One admitted request; :meth:`release` is idempotent (several cleanup paths call it)."""

    __slots__ = ("_ctx", "_start")

    def __init__(self, ctx: ServingContext) -> None:
        self._ctx: ServingContext | None = ctx
        self._start = time.perf_counter()

    @property
    def start(self) -> float:
        return self._start

    def release(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.in_flight -= 1
            ctx.metrics.in_flight.dec()
            ctx.metrics.duration.observe(time.perf_counter() - self._start)


def new_request_id(prefix: str) -> tuple[str, int]:
    return f"{prefix}-{uuid.uuid4().hex}", int(time.time())


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but stop it (ClientGone) as soon as the client disconnects.

    Used while no response has started (non-stream requests, waiting for the first token),
    when Starlette would otherwise keep the handler running for nobody.
    """
    task: asyncio.Future[Any] = asyncio.ensure_future(work)
    receive: Callable[[], Awaitable[Any]] = request.receive

    async def wait_disconnect() -> None:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return

    watcher: asyncio.Future[Any] = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        watcher.cancel()
    if task.cancelled():
        raise ClientGone()
    result: T = task.result()
    return result


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Per-token text for logprobs (only computed when logprobs were asked for)."""
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def chat_logprobs(tokenizer: Any, ids: Sequence[int], lps: Sequence[float]) -> dict[str, Any]:
    return {
        "content": [
            {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
            for t, lp in zip(token_texts(tokenizer, ids), lps, strict=False)
        ]
    }


def completion_logprobs(
    tokenizer: Any, ids: Sequence[int], lps: Sequence[float], offset: int
) -> dict[str, Any]:
    tokens = token_texts(tokenizer, ids)
    offsets = []
    pos = offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": list(lps[: len(tokens)]),
        "top_logprobs": None,
        "text_offset": offsets,
    }


@dataclass(slots=True)
class Collected:
    """A whole generation read for a non-streaming reply (text after stop strings)."""

    text: str
    completion_tokens: int
    finish_reason: str  # "stop" or "length"; chat may still turn it into "tool_calls"
    token_ids: list[int]  # with log probs only
    log_probs: list[float]


async def collect(
    ctx: ServingContext,
    req: EngineRequest,
    pump: ChunkStream,
    lease: Lease,
    stops: Sequence[str],
    want_log_probs: bool,
) -> Collected:
    """Read ``pump`` to its end (or the first stop string) for a non-streaming reply."""
    pipeline = TextPipeline(ctx.tokenizer, stops=stops)
    parts: list[str] = []
    ids_all: list[int] = []
    lps_all: list[float] = []
    n_out = 0
    last = -1
    try:
        while (batch := await pump.next_batch()) is not None:
            for chunk in batch:
                ids = chunk.token_ids
                if ids:
                    if n_out == 0:
                        ctx.metrics.ttft.observe(time.perf_counter() - lease.start)
                    n_out += len(ids)
                    last = ids[-1]
                    parts.append(pipeline.push(ids)[1])
                    if want_log_probs:
                        ids_all.extend(ids)
                        lps_all.extend(chunk.log_probs or ())
                if pipeline.stopped or chunk.final:
                    break
            if pipeline.stopped or batch[-1].final:
                break
    except Exception as exc:
        raise backend_error(exc) from None
    finally:
        pump.close()
    parts.append(pipeline.finish()[1])
    finish = "stop" if pipeline.stopped else ctx.finish_reason(req, n_out, last)
    return Collected("".join(parts), n_out, finish, ids_all, lps_all)


def stream_failed(ctx: ServingContext, exc: Exception, out: list[bytes], lease: Lease) -> bytes:
    """The last bytes of a stream the backend broke: what was pending, an error event,
    ``[DONE]``. Counts the error and releases the lease."""
    err = backend_error(exc)
    ctx.metrics.count_error(err.code or err.type)
    out.append(event(err.body()))
    out.append(DONE)
    lease.release()
    return b"".join(out)


def stream_finished(
    ctx: ServingContext,
    out: list[bytes],
    head: dict[str, Any],
    *,
    prompt_tokens: int,
    completion_tokens: int,
    include_usage: bool,
    finish: str,
    lease: Lease,
) -> bytes:
    """The last bytes of a stream that ended normally: what was pending (with the final
    chunk), the usage chunk when asked for, ``[DONE]``. Counts and releases the lease."""
    if include_usage:
        out.append(event({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}))
    out.append(DONE)
    count_finished(ctx, completion_tokens, finish)
    lease.release()
    return b"".join(out)


def count_finished(ctx: ServingContext, completion_tokens: int, finish: str) -> None:
    ctx.metrics.completion_tokens.inc(completion_tokens)
    ctx.metrics.finished.labels(finish).inc()


class _Plan(Protocol):
    engine_req: EngineRequest
    request_id: str


def abandon(pump: ChunkStream | None, lease: Lease) -> None:
    if pump is not None:
        pump.close()
    lease.release()


async def serve_plan(
    ctx: ServingContext,
    request: Request,
    plan: _Plan,
    *,
    stream: bool,
    aggregate: Callable[[ChunkStream, Lease], Awaitable[dict[str, Any]]],
    events: Callable[[ChunkStream, list[EngineChunk] | None, Lease], AsyncIterator[bytes]],
) -> Response:
    """Admit, start the engine request, then answer as JSON or as an SSE stream.

    Shared by chat and completions: the pump and the lease are released on every path.
    """
    from trtllm_stack.proxy.sse import SSEResponse

    lease = ctx.admit()
    pump: ChunkStream | None = None
    try:
        pump = await ctx.start(plan.engine_req, plan.request_id)
        if not stream:
            result = await until_disconnect(request, aggregate(pump, lease))
            abandon(pump, lease)
            return json_response(200, result)
        # Wait for the first chunk before answering so that a backend that is down gives
        # a proper 503 instead of a 200 stream carrying an error.
        first = await until_disconnect(request, pump.next_batch())
    except ClientGone:
        ctx.metrics.count_error("client_disconnected")
        abandon(pump, lease)
        return Response(status_code=499)
    except ProxyError:
        abandon(pump, lease)
        raise
    except Exception as exc:
        abandon(pump, lease)
        raise backend_error(exc) from None
    except BaseException:
        abandon(pump, lease)
        raise
    owned_pump = pump

    def cleanup() -> None:
        owned_pump.close()
        lease.release()

    return SSEResponse(
        events(owned_pump, first, lease),
        cleanup,
        ctx.settings.send_timeout,
        on_abandon=ctx.metrics.count_error,
    )
