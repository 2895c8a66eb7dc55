"""Where the benchmark sends requests: an OpenAI-compatible HTTP server (streamed
chat/completions or completions) or Triton's ``tensorrt_llm`` model over gRPC.

A target fills in one :class:`RequestRecord` per request. Per chunk it only appends a
timestamp (and, for HTTP, the text); token counting happens after the level.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trtllm_stack.bench.metrics import ERROR, RequestRecord
from trtllm_stack.bench.sse import SSEParser
from trtllm_stack.bench.workload import WorkItem
from trtllm_stack.errors import UserError

TRITON_SCHEME = "triton-grpc"


@dataclass(frozen=True)
class RequestOptions:
    """How requests are shaped, for every target alike."""

    # ask for exactly max_tokens (min_tokens / ignore_eos) when the workload is fixed-length
    ignore_eos: bool = True
    temperature: float | None = None
    request_timeout: float = 600.0
    api_key: str | None = None
    model: str | None = None
    endpoint: str = "chat"  # "chat" or "completions"
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """Side data a target keeps per request until the level ends."""

    text_parts: list[str] | None = None  # HTTP without usage: count tokens from text later
    usage_prompt_tokens: int | None = None


def parse_target(url: str) -> tuple[str, str]:
    """(kind, url) with kind "openai" or "triton-grpc"; rejects what neither can reach."""
    parts = urlsplit(url)
    if parts.scheme == TRITON_SCHEME:
        if not parts.hostname or parts.port is None:
            raise UserError(f"--target {url}: expected triton-grpc://HOST:PORT[/MODEL]")
        return "triton-grpc", url
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise UserError(f"--target {url}: no host")
        return "openai", url
    raise UserError(
        f"--target {url}: expected http(s)://HOST:PORT (OpenAI-compatible server)"
        " or triton-grpc://HOST:PORT"
    )


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenAITarget:
    kind = "openai"

    def __init__(self, url: str, options: RequestOptions, tokenizer: Any) -> None:
        self.url = url
        self.options = options
        self.tokenizer = tokenizer
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.base = base
        self.path = "/chat/completions" if options.endpoint == "chat" else "/completions"
        self.model = options.model
        self._outcomes: dict[int, Outcome] = {}
        # One single-connection session per concurrent request, reused: a single shared
        # pool starved some requests for seconds once the generator's loop was busy
        # (measured with httpx: 64 streams, TTFT p99 4.6 s against a trivial server;
        # per-client connections: no tail). Sessions are kept idle between requests.
        self._idle: list[Any] = []
        self._sessions: list[Any] = []
        self._ssl: Any = None
        self._request_url: Any = None  # yarl.URL, parsed once in open()
        self._models_url: Any = None

    def _new_session(self) -> Any:
        import aiohttp

        headers = {"Accept-Encoding": "identity", "Content-Type": "application/json"}
        if self.options.api_key:
            headers["Authorization"] = f"Bearer {self.options.api_key}"
        session = aiohttp.ClientSession(
            # limit=1: the session's one connection, kept alive from request to request.
            # One TLS context for all sessions (each would otherwise load the CA store).
            connector=aiohttp.TCPConnector(limit=1, ssl=self._ssl or True),
            headers=headers,
            auto_decompress=False,
            # as with httpx before: a limit per socket read, not on the whole stream
            timeout=aiohttp.ClientTimeout(
                total=None, connect=30.0, sock_read=self.options.request_timeout
            ),
        )
        self._sessions.append(session)
        return session

    async def open(self, pool_size: int | None) -> None:
        import ssl

        from yarl import URL  # aiohttp's URL type

        self._request_url = URL(self.base + self.path)
        self._models_url = URL(self.base + "/models")
        self._ssl = ssl.create_default_context()
        if self.model is None:
            try:
                self.model = await self._discover_model()
            except BaseException:
                await self.close()  # callers close only targets that opened
                raise

    async def prepare(self, count: int | None) -> None:
        """Have ``count`` sessions with an open connection before a level starts, so
        that TCP setup of a burst of new connections is not measured as TTFT."""
        import aiohttp

        if not count:
            return
        while len(self._sessions) < count:
            self._idle.append(self._new_session())
        idle = list(self._idle)

        async def touch(session: Any) -> None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self._models_url) as resp:
                    await resp.read()  # read to the end: an unread body closes the connection

        await asyncio.gather(*(touch(s) for s in idle))

    async def _discover_model(self) -> str:
        import aiohttp
        import orjson

        session = self._new_session()
        try:
            async with session.get(self._models_url) as resp:
                resp.raise_for_status()
                # orjson, not resp.json(): that one insists on a JSON content type
                models = orjson.loads(await resp.read()).get("data") or []
            if models and isinstance(models[0].get("id"), str):
                return str(models[0]["id"])
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            raise UserError(
                f"--target {self.url}: cannot list models"
                f" ({_short(str(exc)) or type(exc).__name__});"
                " is the server up? pass --model to skip the lookup"
            ) from None
        finally:
            self._idle.append(session)
        raise UserError(f"--target {self.url}: /v1/models lists no model; pass --model")

    async def close(self) -> None:
        sessions, self._sessions, self._idle = self._sessions, [], []
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.close()

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind, "model": self.model, "endpoint": self.path}

    def _body(self, item: WorkItem) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": item.max_tokens, "stream": True}
        body["stream_options"] = {"include_usage": True}
        if self.options.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": item.prompt}]
        else:
            body["prompt"] = item.prompt
        if item.exact_output and self.options.ignore_eos:
            # vLLM / TensorRT-LLM spellings; our proxy maps min_tokens to the engine's
            body["min_tokens"] = item.max_tokens
            body["ignore_eos"] = True
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        body.update(self.options.extra_body)
        return body

    async def send(self, item: WorkItem, rec: RequestRecord) -> None:
        import aiohttp
        import orjson

        chat = self.options.endpoint == "chat"
        content = orjson.dumps(self._body(item))
        parser = SSEParser()
        parts: list[str] = []
        stamps: list[float] = []
        usage: dict[str, Any] | None = None
        done = False
        session = self._idle.pop() if self._idle else self._new_session()
        t_send = time.perf_counter()
        try:
            # Leaving this block before the body's end (error, cancellation) closes the
            # connection rather than pooling it, so the server sees the client go away.
            async with session.post(self._request_url, data=content) as resp:
                if resp.status != 200:
                    body = (await resp.read()).decode("utf-8", errors="replace")
                    rec.status, rec.error = ERROR, f"HTTP {resp.status}: {_error_message(body)}"
                    return
                async for raw in resp.content.iter_any():
                    for ev in parser.feed(raw):
                        data = ev.data
                        if data == "[DONE]":
                            done = True
                            continue
                        obj = orjson.loads(data)
                        err = obj.get("error")
                        if err:
                            rec.status = ERROR
                            rec.error = "stream error: " + _short(
                                str(err.get("message", err)) if isinstance(err, dict) else str(err)
                            )
                            continue
                        if obj.get("usage"):
                            usage = obj["usage"]
                        for choice in obj.get("choices") or ():
                            piece = _choice_text(choice, chat)
                            if piece:
                                stamps.append(time.perf_counter())
                                parts.append(piece)
                for ev in parser.close():
                    if ev.data == "[DONE]":
                        done = True
        except TimeoutError:  # aiohttp's connect and read timeouts subclass it
            rec.status, rec.error = ERROR, "timeout"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            rec.status, rec.error = ERROR, "connection closed mid-response"
        except aiohttp.ClientConnectorError:
            rec.status, rec.error = ERROR, "cannot connect"
        except aiohttp.ClientError as exc:
            rec.status, rec.error = ERROR, f"{type(exc).__name__}: {_short(str(exc))}"
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            rec.status, rec.error = ERROR, "malformed SSE data"
        finally:
            # also on cancellation: whatever arrived is kept
            t_end = time.perf_counter()
            self._idle.append(session)
            rec.e2e = t_end - t_send
            _fill_timing(rec, t_send, stamps)
            outcome = Outcome()
            if usage and isinstance(usage.get("completion_tokens"), int):
                rec.tokens_out = usage["completion_tokens"]
            else:
                outcome.text_parts = parts
            if usage and isinstance(usage.get("prompt_tokens"), int):
                rec.tokens_in = usage["prompt_tokens"]
            else:
                rec.tokens_in = len(item.prompt_ids)
            self._outcomes[rec.index] = outcome
        if rec.status != ERROR and not done:
            rec.status, rec.error = ERROR, "stream ended without [DONE]"

    def finalize(self, records: list[RequestRecord]) -> None:
        """Count output tokens by tokenizing the text of requests without usage."""
        for rec in records:
            outcome = self._outcomes.pop(rec.index, None)
            if outcome is not None and outcome.text_parts is not None:
                text = "".join(outcome.text_parts)
                rec.tokens_out = (
                    len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0
                )
        self._outcomes.clear()


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if not chat:
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    delta = choice.get("delta") or {}
    out = delta.get("content") or ""
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if reasoning:
        out = reasoning + out
    calls = delta.get("tool_calls")
    if calls:
        # tool-call fragments are output too; their text stands in for counting
        for call in calls:
            fn = call.get("function") or {}
            out += (fn.get("name") or "") + (fn.get("arguments") or "")
    return out if isinstance(out, str) else ""


def _error_message(body: str) -> str:
    import orjson

    try:
        obj = orjson.loads(body)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        msg = err.get("message", body) if isinstance(err, dict) else str(err)
    except (orjson.JSONDecodeError, AttributeError):
        msg = body
    return _short(str(msg))


def _fill_timing(rec: RequestRecord, t_send: float, stamps: list[float]) -> None:
    rec.chunks = len(stamps)
    if stamps:
        rec.ttft = stamps[0] - t_send
        rec.itl = [b - a for a, b in itertools.pairwise(stamps)]


class TritonGrpcTarget:
    """Straight to the ``tensorrt_llm`` model: the same token ids the proxy would send."""

    kind = "triton-grpc"

    def __init__(self, url: str, options: RequestOptions, tokenizer: Any) -> None:
        parts = urlsplit(url)
        self.url = url
        self.address = f"{parts.hostname}:{parts.port}"
        self.model = parts.path.strip("/") or "tensorrt_llm"
        self.options = options
        self.end_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.end_id)
        self._client: Any = None

    async def open(self, pool_size: int | None) -> None:
        try:
            from trtllm_stack.triton.client import EngineClient
        except ImportError as exc:
            raise UserError(
                f"--target {self.url}: the Triton gRPC client is unavailable ({exc})"
            ) from None
        # one channel multiplexes every stream (what the proxy does too)
        self._client = EngineClient(self.address, model=self.model)
        if not await self._client.is_ready():
            await self._client.close()
            self._client = None
            raise UserError(f"--target {self.url}: Triton or model {self.model!r} is not ready")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def prepare(self, count: int | None) -> None:
        return None  # one gRPC channel multiplexes every stream

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind, "model": self.model}

    async def send(self, item: WorkItem, rec: RequestRecord) -> None:
        from trtllm_stack.triton.client import EngineError, EngineUnavailable
        from trtllm_stack.triton.tensors import EngineRequest

        req = EngineRequest(
            prompt_ids=item.prompt_ids,
            max_tokens=item.max_tokens,
            end_id=self.end_id,
            pad_id=self.pad_id,
            streaming=True,
            temperature=self.options.temperature,
            min_tokens=item.max_tokens if item.exact_output and self.options.ignore_eos else None,
        )
        rec.tokens_in = len(item.prompt_ids)
        stamps: list[float] = []
        tokens = 0
        t_send = time.perf_counter()
        try:
            async for chunk in self._client.generate(req, request_id=str(rec.index)):
                if chunk.token_ids:
                    stamps.append(time.perf_counter())
                    tokens += len(chunk.token_ids)
        except EngineUnavailable as exc:
            rec.status, rec.error = ERROR, f"engine unavailable: {_short(str(exc))}"
        except EngineError as exc:
            rec.status, rec.error = ERROR, f"engine error: {_short(str(exc))}"
        finally:
            rec.e2e = time.perf_counter() - t_send
            rec.tokens_out = tokens
            _fill_timing(rec, t_send, stamps)

    def finalize(self, records: list[RequestRecord]) -> None:
        return None
