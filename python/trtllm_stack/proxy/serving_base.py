"""What chat and text completions share: request checks, engine limits, and
:class:`RequestRunner`, the one request path for both (as SGLang's serving_base):

    handle(): count -> plan() [endpoint: validate, prompt ids, EngineRequest] -> admit ->
    engine.open (n requests for n choices, choices.py) ->
        stream: first batch, then SSE from run() with one stream_output() per choice
        non-stream: run() into one Collected per choice, then reply() [endpoint: the JSON]

:meth:`RequestRunner.run` is the only per-token loop: TTFT/ITL metrics, token counts,
flushing, the engine streams' close, the finish reasons and the endings (error event,
usage chunk, ``[DONE]``, counters, lease release) for all four kinds of reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from trtllm_stack.proxy.choices import ChoiceStreams, choice_count, merge, open_choices
from trtllm_stack.proxy.engine import ChunkStream, Engine, EngineLimits
from trtllm_stack.proxy.errors import (
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    ProxyError,
    engine_failure,
    json_response,
)
from trtllm_stack.proxy.guided import Guide, request_guide
from trtllm_stack.proxy.logit_bias import embedding_bias
from trtllm_stack.proxy.metrics import ProxyMetrics
from trtllm_stack.proxy.prompt_worker import PromptWork
from trtllm_stack.proxy.protocol import _SamplingRequest
from trtllm_stack.proxy.settings import ProxySettings
from trtllm_stack.proxy.sse import DONE, event
from trtllm_stack.proxy.workers import SharedInFlight
from trtllm_stack.text.chat_template import ChatTemplate
from trtllm_stack.text.pipeline import TextPipeline
from trtllm_stack.text.special_tokens import LiteralText
from trtllm_stack.text.tool_calls import ToolCallDelta
from trtllm_stack.triton.tensors import EngineChunk, EngineRequest

log = logging.getLogger("trtllm_stack.proxy")

T = TypeVar("T")

# Limits used when the engine does not publish its own (older model repositories).
_FALLBACK_SEQ_LEN = 32768


class ClientGone(Exception):
    """The HTTP client disconnected before the response was ready."""


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
        # --workers: the in-flight count of the whole server (proxy/workers.py).
        self.shared_limit: SharedInFlight | None = None
        self._limits: EngineLimits | None = None
        self.end_id: int = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.end_id
        # Qwen3 ends chat turns with <|im_end|> (end_id) but may also emit <|endoftext|>.
        extra = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.extra_stop_ids: tuple[tuple[int, ...], ...] = (
            ((int(extra),),) if isinstance(extra, int) and extra != self.end_id else ()
        )
        self.literal = LiteralText(tokenizer)
        self.chat_template = ChatTemplate(
            tokenizer,
            max_seconds=settings.template_timeout,
            max_chars=settings.max_template_chars,
        )
        self.prompt = PromptWork(
            tokenizer.backend_tokenizer,
            cache_bytes=settings.prompt_cache_bytes,
            inline_chars=settings.prompt_inline_chars,
            threads=settings.prompt_threads,
            nice=settings.prompt_thread_nice,
            warm_replies=settings.prompt_warm_replies,
            registry=metrics.registry,
        )

    def encode(self, text: str) -> Sequence[int]:
        """Token ids of ``text`` (markers special); safe from the prompt thread too."""
        try:
            ids = self.prompt.encode(text)
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
            except Exception as exc:
                raise engine_failure(exc, "to give its limits") from None
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
        shared = self.shared_limit
        if (limit and self.in_flight >= limit) or (shared is not None and not shared.acquire()):
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
            embedding_bias=embedding_bias(body.logit_bias, limits.vocab_size),
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
            if ctx.shared_limit is not None:
                ctx.shared_limit.release()
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
class Plan:
    """What both endpoints decide before the engine is asked (endpoints extend it)."""

    request_id: str
    created: int
    model: str
    engine_req: EngineRequest
    prompt_tokens: int
    stops: list[str]
    include_usage: bool
    continuous_usage: bool  # stream_options.continuous_usage_stats (vLLM)
    want_logprobs: bool


P = TypeVar("P", bound=Plan)


class TokenSink(Protocol):
    """Where :meth:`RequestRunner.run` puts a request's tokens: SSE chunks for a stream
    (the endpoint's :meth:`RequestRunner.stream_output`) or a :class:`Collected`."""

    @property
    def stopped(self) -> bool: ...

    def push(self, ids: list[int], batch: list[EngineChunk], out: list[bytes]) -> None:
        """Take the batch's token ids (``batch`` for log probs); append bytes to send."""

    def finish(self, out: list[bytes], finish: str) -> str:
        """Flush what is held back; return the finish reason to report (``finish`` is
        "stop"/"length" as the engine and stop strings decided)."""


@dataclass(slots=True)
class Collected:
    """A whole generation read for a non-streaming reply, through the same pipeline as a
    stream's (so the same reasoning, content and tool calls)."""

    pipeline: TextPipeline
    want_log_probs: bool
    text: str = ""  # content
    reasoning: str = ""
    tool_deltas: list[ToolCallDelta] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" or "length"; chat may still turn it into "tool_calls"
    token_ids: list[int] = field(default_factory=list)  # with log probs only
    log_probs: list[float] = field(default_factory=list)
    _parts: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.pipeline.stopped

    def push(self, ids: list[int], batch: list[EngineChunk], out: list[bytes]) -> None:
        self.completion_tokens += len(ids)
        self._take(self.pipeline.push(ids))
        if self.want_log_probs:
            self.token_ids.extend(ids)
            self.log_probs.extend(lp for ch in batch for lp in ch.log_probs or ())

    def finish(self, out: list[bytes], finish: str) -> str:
        self._take(self.pipeline.finish())
        self.text = "".join(self._parts)
        self.reasoning = "".join(self._reasoning)
        self.finish_reason = finish
        return finish

    def _take(self, parsed: tuple[str, str, list[ToolCallDelta]]) -> None:
        reasoning, content, deltas = parsed
        if reasoning:
            self._reasoning.append(reasoning)
        self._parts.append(content)
        if deltas:
            self.tool_deltas.extend(deltas)


def abandon(streams: ChoiceStreams | None, lease: Lease) -> None:
    if streams is not None:
        streams.close()
    lease.release()


class RequestRunner(Generic[P]):
    """One request from body to reply, for every endpoint (template method).

    Subclasses give ``endpoint`` (metrics label), ``chunk_object`` (the SSE chunks'
    ``object``) and the three steps that differ: :meth:`plan`, :meth:`stream_output`,
    :meth:`reply`. Everything else, in particular the per-token loop, is here once.
    """

    endpoint: ClassVar[str]
    chunk_object: ClassVar[str]

    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    # -- what endpoints define -------------------------------------------------------------

    async def plan(self, body: Any) -> P:
        """Validate the body and turn it into an engine request (raise ProxyError)."""
        raise NotImplementedError

    def stream_output(
        self, plan: P, head: dict[str, Any], out: list[bytes], index: int
    ) -> TokenSink:
        """The SSE formatter of choice ``index``; may append opening chunks to ``out``."""
        raise NotImplementedError

    def reply(self, plan: P, got: Collected) -> tuple[dict[str, Any], str]:
        """The non-stream JSON reply (one choice) and its finish reason."""
        raise NotImplementedError

    def pipeline(self, plan: P, *, stream: bool) -> TextPipeline:
        """The request's text pipeline: the same machine for its stream and its JSON reply."""
        return TextPipeline(self.ctx.tokenizer, stops=plan.stops)

    # -- the request path ------------------------------------------------------------------

    async def handle(self, request: Request, body: Any) -> Response:
        """Count, plan, admit, start the engine request(s), answer as JSON or SSE.

        The engine streams and the lease are released on every path.
        """
        from trtllm_stack.proxy.sse import SSEResponse

        ctx = self.ctx
        ctx.metrics.requests.labels(self.endpoint).inc()
        plan = await self.plan(body)
        ctx.metrics.prompt_tokens.inc(plan.prompt_tokens)
        n = choice_count(getattr(body, "n", 1))
        lease = ctx.admit()
        streams: ChoiceStreams | None = None
        try:
            streams = await open_choices(ctx, plan, n)
            if not body.stream:
                result = await until_disconnect(request, self._collect(plan, streams, lease, n))
                abandon(streams, lease)
                return json_response(200, result)
            # Wait for the first chunk before answering so that a backend that is down
            # gives a proper 503 instead of a 200 stream carrying an error.
            first = await until_disconnect(request, streams.next_batch())
        except ClientGone:
            ctx.metrics.count_error("client_disconnected")
            abandon(streams, lease)
            return Response(status_code=499)
        except ProxyError:
            abandon(streams, lease)
            raise
        except Exception as exc:
            abandon(streams, lease)
            raise engine_failure(exc) from None
        except BaseException:
            abandon(streams, lease)
            raise
        owned = streams

        def cleanup() -> None:
            owned.close()
            lease.release()

        return SSEResponse(
            self._stream(plan, owned, first, lease, n),
            cleanup,
            ctx.settings.send_timeout,
            on_abandon=ctx.metrics.count_error,
        )

    def _head(self, plan: P) -> dict[str, Any]:
        return {
            "id": plan.request_id,
            "object": self.chunk_object,
            "created": plan.created,
            "model": plan.model,
        }

    def _stream(
        self,
        plan: P,
        streams: ChoiceStreams,
        first: list[EngineChunk] | None,
        lease: Lease,
        n: int,
    ) -> AsyncIterator[bytes]:
        head = self._head(plan)
        out: list[bytes] = []
        sinks = [self.stream_output(plan, head, out, i) for i in range(n)]
        return self.run(plan, streams, first, lease, sinks, out, head)

    async def _collect(
        self, plan: P, streams: ChoiceStreams, lease: Lease, n: int
    ) -> dict[str, Any]:
        got = [Collected(self.pipeline(plan, stream=False), plan.want_logprobs) for _ in range(n)]
        first = await streams.next_batch()
        async for _ in self.run(plan, streams, first, lease, got, [], None):
            pass  # a Collected sends nothing: run() only returns at the end
        replies = []
        for g in got:
            result, finish = self.reply(plan, g)
            count_finished(self.ctx, g.completion_tokens, finish)
            replies.append(result)
        return replies[0] if n == 1 else merge(replies)

    async def run(
        self,
        plan: P,
        streams: ChoiceStreams,
        batch: list[EngineChunk] | None,
        lease: Lease,
        sinks: Sequence[TokenSink],
        out: list[bytes],
        head: dict[str, Any] | None,
    ) -> AsyncIterator[bytes]:
        """The per-token loop: read ``streams`` from ``batch`` (of choice
        ``streams.index``) on, each choice's batches into its sink, yielding what they
        wrote to ``out`` once per engine batch. A choice ends on its final chunk or stop
        string (its engine request closed, its final chunk written); the loop when all
        have. With ``head`` (a stream) it ends with the stream's last bytes, an error event
        included, and releases the lease; without, it raises the engine's failure as a
        ProxyError and leaves counting to the caller."""
        metrics = self.ctx.metrics
        stamp = plan.continuous_usage and head is not None
        prompt_tokens = plan.prompt_tokens
        n = len(sinks)
        read = streams.next_batch
        # The current choice's state lives in locals (n = 1: always); per choice: tokens
        # so far, last token, time of its last batch, finish reason.
        cur = streams.index
        sink = sinks[cur]
        n_out = 0
        last = -1
        last_at = 0.0
        counts = [0] * n
        lasts = [-1] * n
        last_ats = [0.0] * n
        finishes = [""] * n
        live = n
        first_token = True
        if stamp and out:
            stamp_usage(out, prompt_tokens, 0)  # the role chunks (vLLM: 0 tokens)
        try:
            try:
                while True:
                    if streams.index != cur:  # n > 1: switch to that choice's state
                        counts[cur], lasts[cur], last_ats[cur] = n_out, last, last_at
                        cur = streams.index
                        sink = sinks[cur]
                        n_out, last, last_at = counts[cur], lasts[cur], last_ats[cur]
                    if batch is not None:
                        ids = (
                            batch[0].token_ids
                            if len(batch) == 1
                            else [t for c in batch for t in c.token_ids]
                        )
                        if ids:
                            now = time.perf_counter()
                            if n_out:
                                metrics.inter_token.observe((now - last_at) / len(ids))
                            elif first_token:
                                metrics.ttft.observe(now - lease.start)
                                first_token = False
                            last_at = now
                            n_out += len(ids)
                            last = ids[-1]
                            sink.push(ids, batch, out)
                    if batch is None or batch[-1].final or sink.stopped:
                        streams.drop(cur)
                        finishes[cur] = sink.finish(
                            out,
                            "stop"
                            if sink.stopped
                            else self.ctx.finish_reason(plan.engine_req, n_out, last),
                        )
                        counts[cur] = n_out
                        live -= 1
                        if not live:
                            if stamp:
                                stamp_usage(out, prompt_tokens, n_out)
                            break
                    if out:
                        if stamp:
                            # vLLM: each chunk carries its own choice's tokens so far.
                            stamp_usage(out, prompt_tokens, n_out)
                        yield b"".join(out)
                        out.clear()
                    batch = await read()
            finally:
                streams.close()
        except Exception as exc:
            if head is None:
                raise engine_failure(exc) from None
            yield stream_failed(self.ctx, exc, out, lease)
            return
        if head is not None:
            yield stream_finished(
                self.ctx,
                out,
                head,
                prompt_tokens=prompt_tokens,
                completion_tokens=counts,
                include_usage=plan.include_usage,
                finishes=finishes,
                lease=lease,
            )


def stream_failed(ctx: ServingContext, exc: Exception, out: list[bytes], lease: Lease) -> bytes:
    """The last bytes of a stream the backend broke: what was pending, an error event,
    ``[DONE]``. Counts the error and releases the lease."""
    err = engine_failure(exc)
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
    completion_tokens: Sequence[int],
    include_usage: bool,
    finishes: Sequence[str],
    lease: Lease,
) -> bytes:
    """The last bytes of a stream that ended normally: what was pending (with the final
    chunks), the usage chunk when asked for (one, all choices summed, the prompt once),
    ``[DONE]``. Counts each choice and releases the lease."""
    if include_usage:
        total = sum(completion_tokens)
        out.append(event({**head, "choices": [], "usage": usage(prompt_tokens, total)}))
    out.append(DONE)
    for tokens, finish in zip(completion_tokens, finishes, strict=True):
        count_finished(ctx, tokens, finish)
    lease.release()
    return b"".join(out)


def stamp_usage(out: list[bytes], prompt_tokens: int, completion_tokens: int) -> None:
    """continuous_usage_stats: the usage so far on each pending chunk (``...}]}\n\n`` ->
    ``...}],"usage":{...}}\n\n``)."""
    tail = b',"usage":' + orjson.dumps(usage(prompt_tokens, completion_tokens)) + b"}\n\n"
    for i, chunk in enumerate(out):
        if chunk.endswith(b"]}\n\n"):
            out[i] = chunk[:-3] + tail


def count_finished(ctx: ServingContext, completion_tokens: int, finish: str) -> None:
    ctx.metrics.completion_tokens.inc(completion_tokens)
    ctx.metrics.finished.labels(finish).inc()
