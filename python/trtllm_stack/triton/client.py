"""Async gRPC client for the ``tensorrt_llm`` model: token ids in, token chunks out.

One channel per process (:mod:`grpc_wire`, HTTP/2 on asyncio). Each request is one
bidirectional ModelStreamInfer call; closing it before the final response resets the
stream, which makes Triton cancel the request in the backend. Requests and responses are
built from Triton's protobufs directly (not via ``InferInput``/``InferResult``) and the
response tensors are read as raw bytes, to keep per-token work small.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
from tritonclient.grpc import service_pb2

from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.grpc_wire import (
    DEFAULT_KEEPALIVE,
    GrpcCallError,
    GrpcChannel,
    GrpcStream,
    Keepalive,
    Status,
    split_target,
)

_WIRE_TO_NP = {
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


class EngineError(Exception):
    """The engine failed a call. ``status`` (gRPC) is what the proxy maps to an OpenAI
    error (proxy/errors.py ``engine_failure``); the subclasses only name common cases."""

    status: Status = Status.UNKNOWN

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class EngineUnavailable(EngineError):
    """Triton cannot be reached, or the model is not there or not ready."""

    status = Status.UNAVAILABLE


class EngineSilent(EngineError):
    """No response for the request within its timeout (the request was cancelled)."""

    status = Status.DEADLINE_EXCEEDED


@dataclass(frozen=True, slots=True)
class EngineLimits:
    max_input_len: int | None
    max_seq_len: int | None
    # Rows of the engine's logits (None: a repository from before this parameter).
    vocab_size: int | None = None


def build_request(
    req: T.EngineRequest, model: str, request_id: str
) -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, array in T.engine_inputs(req):
        tensor = msg.inputs.add()
        tensor.name = name
        tensor.datatype = T.WIRE_DTYPES[name]
        tensor.shape.extend(array.shape)
        msg.raw_input_contents.append(T.wire_bytes(array))
    for name in T.requested_outputs(req):
        msg.outputs.add().name = name
    msg.parameters[T.EMPTY_FINAL_RESPONSE_PARAM].bool_param = True
    return msg


def _response_getter(
    resp: service_pb2.ModelInferResponse,
) -> Callable[[str], np.ndarray | None]:
    index = {out.name: i for i, out in enumerate(resp.outputs)}

    def as_numpy(name: str) -> np.ndarray | None:
        i = index.get(name)
        if i is None or i >= len(resp.raw_output_contents):
            return None
        out = resp.outputs[i]
        dtype = _WIRE_TO_NP.get(out.datatype)
        if dtype is None:
            return None
        return np.frombuffer(resp.raw_output_contents[i], dtype=dtype).reshape(tuple(out.shape))

    return as_numpy


def parse_response(
    resp: service_pb2.ModelInferResponse, want_log_probs: bool = False
) -> T.EngineChunk:
    """Beam 0 of one response, straight from the raw bytes (this runs once per token).

    Same result as ``T.decode_engine_outputs`` over numpy views, at a fraction of the cost:
    no dict, no numpy, just memoryview casts of the two or three small tensors we read.
    """
    param = resp.parameters.get(T.FINAL_RESPONSE_PARAM)
    final = param is not None and param.bool_param
    ids_raw = seq_raw = lp_raw = None
    ids_out = None
    for out, data in zip(resp.outputs, resp.raw_output_contents, strict=False):
        name = out.name
        if name == _OUTPUT_IDS:
            ids_out, ids_raw = out, data
        elif name == _SEQUENCE_LENGTH:
            seq_raw = data
        elif name == _OUTPUT_LOG_PROBS:
            lp_raw = data if out.datatype == "FP32" else None
    if ids_out is None:
        # A flag-only final response (EOS) carries no tensors.
        if not resp.outputs:
            return T.EngineChunk([], [] if want_log_probs else None, final)
        return T.decode_engine_outputs(_response_getter(resp), final, want_log_probs)
    if ids_out.datatype != "INT32":
        return T.decode_engine_outputs(_response_getter(resp), final, want_log_probs)
    ids = memoryview(ids_raw).cast("i")  # type: ignore[arg-type]
    shape = ids_out.shape
    n = shape[-1] if shape else len(ids)
    if seq_raw is not None and len(seq_raw) >= 4:
        n = min(n, memoryview(seq_raw).cast("i")[0])
    tokens = ids[:n].tolist()
    log_probs: list[float] | None = None
    if want_log_probs:
        # tolist() of an "f" view gives floats (typeshed says list[int]).
        log_probs = (
            cast(list[float], memoryview(lp_raw).cast("f")[: len(tokens)].tolist())
            if lp_raw
            else []
        )
    return T.EngineChunk(tokens, log_probs, final)


_OUTPUT_IDS, _SEQUENCE_LENGTH, _OUTPUT_LOG_PROBS = (
    T.OUTPUT_IDS,
    T.SEQUENCE_LENGTH,
    T.OUTPUT_LOG_PROBS,
)


_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
_SERVER_READY = "/inference.GRPCInferenceService/ServerReady"
_MODEL_READY = "/inference.GRPCInferenceService/ModelReady"
_MODEL_CONFIG = "/inference.GRPCInferenceService/ModelConfig"


class SilenceWatch:
    """Calls ``on_silent`` once a request has received nothing for ``timeout`` seconds.

    One timer per request, re-armed lazily from ``last_activity()`` (the time of the last
    frame): nothing runs per token. Used by :class:`EngineStream` and by
    ``proxy.engine.TokenPump`` (engines written as generators), so both fail the same way.
    """

    __slots__ = ("_last_activity", "_on_silent", "_timer", "fired", "timeout")

    def __init__(
        self, timeout: float, last_activity: Callable[[], float], on_silent: Callable[[], None]
    ) -> None:
        self.timeout = timeout
        self.fired = False
        self._last_activity = last_activity
        self._on_silent = on_silent
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            timeout, self._check
        )

    def _check(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_activity()
        if idle < self.timeout:
            self._timer = loop.call_later(self.timeout - idle, self._check)
            return
        self.fired = True
        self._on_silent()

    def error(self) -> EngineSilent:
        return EngineSilent(f"no response from the backend for {self.timeout:g} s")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class EngineStream:
    """One generation request in flight: Triton's responses, parsed, in batches.

    :meth:`next_batch` returns every chunk that arrived since the last call (so a reader
    that falls behind catches up in one step), None after the final chunk. :meth:`close`
    before the final chunk resets the stream, and Triton cancels the request.
    With ``timeout``, a request that receives nothing for that long fails with
    :class:`EngineSilent` (:class:`SilenceWatch`).
    """

    __slots__ = ("_call", "_done", "_want_log_probs", "_watch")

    def __init__(self, call: GrpcStream, want_log_probs: bool, timeout: float | None) -> None:
        self._call = call
        self._want_log_probs = want_log_probs
        self._done = False
        self._watch = (
            SilenceWatch(timeout, lambda: call.last_activity, call.cancel)
            if timeout is not None
            else None
        )

    async def next_batch(self) -> list[T.EngineChunk] | None:
        if self._done:
            return None
        call = self._call
        try:
            raw = await call.read_batch()
        except GrpcCallError as exc:
            self.close()
            watch = self._watch
            if watch is not None and watch.fired:
                raise watch.error() from None
            raise _as_engine_exception(exc) from None
        if raw is None:
            self.close()
            raise EngineError("Triton closed the stream before the final response")
        chunks: list[T.EngineChunk] = []
        parse = _STREAM_RESPONSE.FromString
        for data in raw:
            resp = parse(data)
            if resp.error_message:
                # Stream errors carry only Triton's message (ModelStreamInferResponse has
                # no status field), so there is no code to map: the request failed.
                self.close()
                raise EngineError(resp.error_message)
            chunk = parse_response(resp.infer_response, self._want_log_probs)
            chunks.append(chunk)
            if chunk.final:
                # Done: end our half; Triton then ends the call (status OK).
                self._stop_watch()
                self._done = True
                call.close_send()
                break
        return chunks

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def close(self) -> None:
        """Idempotent. Before the final chunk: cancel the request in Triton."""
        self._stop_watch()
        if not self._done:
            self._done = True
            self._call.cancel()


_STREAM_RESPONSE = service_pb2.ModelStreamInferResponse


class EngineClient:
    """The ``tensorrt_llm`` model over Triton's gRPC API, on one :class:`GrpcChannel`."""

    def __init__(
        self,
        url: str = "localhost:8001",
        model: str = T.ENGINE_MODEL,
        *,
        keepalive: Keepalive | None = DEFAULT_KEEPALIVE,
    ) -> None:
        self.url = url
        self.model = model
        self.keepalive = keepalive
        split_target(url)  # a bad address fails here, not at the first request
        self._channel: GrpcChannel | None = None

    def _get_channel(self) -> GrpcChannel:
        # Created lazily so that its connections bind to the running event loop.
        if self._channel is None:
            self._channel = GrpcChannel(self.url, keepalive=self.keepalive)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None

    async def is_ready(self, timeout: float = 2.0) -> bool:
        channel = self._get_channel()
        try:
            server = service_pb2.ServerReadyResponse.FromString(
                await channel.unary(
                    _SERVER_READY, service_pb2.ServerReadyRequest().SerializeToString(), timeout
                )
            )
            if not server.ready:
                return False
            model = service_pb2.ModelReadyResponse.FromString(
                await channel.unary(
                    _MODEL_READY,
                    service_pb2.ModelReadyRequest(name=self.model).SerializeToString(),
                    timeout,
                )
            )
            return bool(model.ready)
        except GrpcCallError:
            return False

    async def limits(self, timeout: float = 5.0) -> EngineLimits:
        try:
            resp = service_pb2.ModelConfigResponse.FromString(
                await self._get_channel().unary(
                    _MODEL_CONFIG,
                    service_pb2.ModelConfigRequest(name=self.model).SerializeToString(),
                    timeout,
                )
            )
        except GrpcCallError as exc:
            raise _as_engine_exception(exc) from None
        params = resp.config.parameters

        def read(key: str) -> int | None:
            value = params[key].string_value if key in params else ""
            return int(value) if value.strip().isdigit() else None

        return EngineLimits(
            read(T.PARAM_MAX_INPUT_LEN), read(T.PARAM_MAX_SEQ_LEN), read(T.PARAM_VOCAB_SIZE)
        )

    async def open(
        self, req: T.EngineRequest, request_id: str | None = None, *, timeout: float | None = None
    ) -> EngineStream:
        """Send the request; the returned stream yields its chunks (see EngineStream)."""
        msg = build_request(req, self.model, request_id or uuid.uuid4().hex)
        payload = msg.SerializeToString()
        try:
            call = await self._get_channel().open_stream(_STREAM_INFER, payload)
        except GrpcCallError as exc:
            raise _as_engine_exception(exc) from None
        return EngineStream(call, req.return_log_probs, timeout)

    async def generate(
        self, req: T.EngineRequest, request_id: str | None = None
    ) -> AsyncIterator[T.EngineChunk]:
        """The request's chunks one by one; the last has ``final=True``. Leaving the loop
        early cancels the request."""
        stream = await self.open(req, request_id)
        try:
            while (batch := await stream.next_batch()) is not None:
                for chunk in batch:
                    yield chunk
        finally:
            stream.close()


# Codes that mean "no engine to talk to" rather than "the engine refused this request"
# (a replica router tries another replica). An unknown model is NOT_FOUND in current Triton
# and UNAVAILABLE in older ones; DEADLINE_EXCEEDED is a unary call nobody answered.
_UNREACHABLE = frozenset({Status.UNAVAILABLE, Status.NOT_FOUND, Status.DEADLINE_EXCEEDED})


def _as_engine_exception(exc: GrpcCallError) -> EngineError:
    cls = EngineUnavailable if exc.code in _UNREACHABLE else EngineError
    return cls(f"{exc.code.name}: {exc.message}", exc.code)
