"""Async gRPC client for the ``tensorrt_llm`` model: token ids in, token chunks out.

One channel per process. Each ``generate`` opens one bidirectional ModelStreamInfer call on
that channel; closing the iterator early cancels the call, which makes Triton cancel the
request in the backend. Requests and responses are built from protobufs directly (not via
``InferInput``/``InferResult``) to keep per-token work small.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from trtllm_stack.triton import tensors as T

# Big prompts (tens of thousands of int32 ids) must fit.
_MAX_MESSAGE = 64 * 1024 * 1024
_WIRE_TO_NP = {
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


class EngineUnavailable(Exception):
    """Triton cannot be reached, or the model is not ready."""


class EngineError(Exception):
    """Triton answered the request with an error."""


@dataclass(frozen=True, slots=True)
class EngineLimits:
    max_input_len: int | None
    max_seq_len: int | None


def build_request(
    req: T.EngineRequest, model: str, request_id: str
) -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, array in T.engine_inputs(req):
        tensor = msg.inputs.add()
        tensor.name = name
        tensor.datatype = T.WIRE_DTYPES[name]
        tensor.shape.extend(array.shape)
        msg.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
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
    final = bool(param.bool_param) if param is not None else False
    ids_i = seq_i = lp_i = -1
    for i, out in enumerate(resp.outputs):
        name = out.name
        if name == T.OUTPUT_IDS:
            ids_i = i
        elif name == T.SEQUENCE_LENGTH:
            seq_i = i
        elif name == T.OUTPUT_LOG_PROBS:
            lp_i = i
    raw = resp.raw_output_contents
    if ids_i < 0 or ids_i >= len(raw) or resp.outputs[ids_i].datatype != "INT32":
        return T.decode_engine_outputs(_response_getter(resp), final, want_log_probs)
    ids = memoryview(raw[ids_i]).cast("i")
    shape = resp.outputs[ids_i].shape
    width = shape[-1] if shape else len(ids)
    n = width
    if 0 <= seq_i < len(raw) and len(raw[seq_i]) >= 4:
        n = min(width, memoryview(raw[seq_i]).cast("i")[0])
    tokens = ids[:n].tolist()
    log_probs: list[float] | None = None
    if want_log_probs:
        log_probs = []
        if 0 <= lp_i < len(raw) and resp.outputs[lp_i].datatype == "FP32":
            log_probs = [float(x) for x in memoryview(raw[lp_i]).cast("f")[: len(tokens)]]
    return T.EngineChunk(tokens, log_probs, final)


class EngineClient:
    def __init__(self, url: str = "localhost:8001", model: str = T.ENGINE_MODEL) -> None:
        self.url = url
        self.model = model
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    def _get_stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        # Created lazily so that the channel binds to the running event loop.
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.url,
                options=[
                    ("grpc.max_send_message_length", _MAX_MESSAGE),
                    ("grpc.max_receive_message_length", _MAX_MESSAGE),
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                    ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.keepalive_permit_without_calls", 1),
                    # gRPC's default reconnect backoff grows to 120 s: after Triton
                    # restarts, the proxy would stay unavailable that long.
                    ("grpc.initial_reconnect_backoff_ms", 500),
                    ("grpc.min_reconnect_backoff_ms", 500),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ],
            )
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub = None

    async def is_ready(self, timeout: float = 2.0) -> bool:
        stub = self._get_stub()
        try:
            server = await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)
            if not server.ready:
                return False
            model = await stub.ModelReady(
                service_pb2.ModelReadyRequest(name=self.model), timeout=timeout
            )
            return bool(model.ready)
        except grpc.aio.AioRpcError:
            return False

    async def limits(self, timeout: float = 5.0) -> EngineLimits:
        stub = self._get_stub()
        try:
            resp = await stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=self.model), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _as_engine_exception(exc) from None
        params = resp.config.parameters

        def read(key: str) -> int | None:
            value = params[key].string_value if key in params else ""
            return int(value) if value.strip().isdigit() else None

        return EngineLimits(read(T.PARAM_MAX_INPUT_LEN), read(T.PARAM_MAX_SEQ_LEN))

    async def generate(
        self, req: T.EngineRequest, request_id: str | None = None
    ) -> AsyncIterator[T.EngineChunk]:
        """Stream the request's responses; the last chunk has ``final=True``."""
        stub = self._get_stub()
        msg = build_request(req, self.model, request_id or uuid.uuid4().hex)
        done = asyncio.Event()

        async def requests() -> AsyncIterator[service_pb2.ModelInferRequest]:
            yield msg
            # Keep our half of the stream open until the final response arrived.
            await done.wait()

        call = stub.ModelStreamInfer(requests())
        try:
            async for resp in call:
                if resp.error_message:
                    raise EngineError(resp.error_message)
                chunk = parse_response(resp.infer_response, req.return_log_probs)
                yield chunk
                if chunk.final:
                    return
            raise EngineError("Triton closed the stream before the final response")
        except grpc.aio.AioRpcError as exc:
            raise _as_engine_exception(exc) from None
        finally:
            # Early exit (client went away, stop string, timeout): cancel the RPC so Triton
            # cancels the request instead of generating for nobody. Cancel before ending our
            # half of the stream: a half-close racing the cancel is one more state transition
            # for Triton's stream handler to get right under mass disconnects.
            if not call.done():
                call.cancel()
            done.set()


def _as_engine_exception(exc: grpc.aio.AioRpcError) -> Exception:
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EngineUnavailable(f"Triton at gRPC is unavailable: {exc.details()}")
    if code == grpc.StatusCode.NOT_FOUND or "not found" in (exc.details() or "").lower():
        return EngineUnavailable(f"model not available: {exc.details()}")
    return EngineError(f"{code.name}: {exc.details()}")
