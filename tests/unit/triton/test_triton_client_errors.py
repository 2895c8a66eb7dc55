"""EngineClient's real request path against a grpc.aio server speaking Triton's
ModelStreamInfer: the silence timeout (SilenceWatch over grpc_wire), and the one mapping
from gRPC status to engine exception to OpenAI error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from trtllm_stack.proxy.errors import (
    BackendFailed,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    engine_failure,
)
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.client import (
    EngineClient,
    EngineError,
    EngineSilent,
    EngineUnavailable,
    _as_engine_exception,
)
from trtllm_stack.triton.grpc_wire import GrpcCallError, Status

STEP = 5.0


def _token_response(token: int, final: bool) -> bytes:
    resp = service_pb2.ModelInferResponse(model_name=T.ENGINE_MODEL)
    out = resp.outputs.add()
    out.name, out.datatype = T.OUTPUT_IDS, "INT32"
    out.shape.extend([1, 1])
    resp.raw_output_contents.append(np.array([token], dtype=np.int32).tobytes())
    resp.parameters[T.FINAL_RESPONSE_PARAM].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=resp).SerializeToString()


class FakeTriton:
    """ModelStreamInfer that sends ``tokens`` responses and then, per ``mode``: hangs
    (``silent``), aborts with ``code``, or sends a stream error message."""

    def __init__(self) -> None:
        self.mode = "silent"
        self.code = grpc.StatusCode.NOT_FOUND
        self.tokens = 1
        self.cancelled = asyncio.Event()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def stream_infer(
            requests: AsyncIterator[bytes], context: Any
        ) -> AsyncIterator[bytes]:
            await anext(requests)
            for i in range(self.tokens):
                yield _token_response(100 + i, False)
            if self.mode == "abort":
                await context.abort(self.code, "Request for unknown model: 'x' is not found")
            if self.mode == "error":
                yield service_pb2.ModelStreamInferResponse(
                    error_message="input too long"
                ).SerializeToString()
                return
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream_infer)},
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)


@pytest.fixture
async def triton() -> AsyncIterator[FakeTriton]:
    server = FakeTriton()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(triton: FakeTriton) -> AsyncIterator[EngineClient]:
    c = EngineClient(f"127.0.0.1:{triton.port}")
    try:
        yield c
    finally:
        await c.close()


def _request() -> T.EngineRequest:
    return T.EngineRequest(prompt_ids=[1, 2, 3], max_tokens=8, end_id=0, pad_id=0)


async def test_silent_stream_fails_after_the_timeout_and_cancels_it_in_triton(
    triton: FakeTriton, client: EngineClient
):
    loop = asyncio.get_running_loop()
    stream = await client.open(_request(), timeout=0.3)
    async with asyncio.timeout(STEP):
        batch = await stream.next_batch()
        assert batch is not None and batch[0].token_ids == [100]
        silent_from = loop.time()
        with pytest.raises(EngineSilent) as exc:
            await stream.next_batch()
        assert 0.2 < loop.time() - silent_from < 2.0
        assert exc.value.status == Status.DEADLINE_EXCEEDED
        await triton.cancelled.wait()  # the reset reached Triton's handler
    assert await stream.next_batch() is None
    conn = client._get_channel()._conns[0]
    assert conn.streams == {} and conn._blocked == {}
    assert isinstance(engine_failure(exc.value), BackendTimeout)


async def test_tokens_re_arm_the_silence_timer(triton: FakeTriton, client: EngineClient):
    # 5 responses then silence: the timer is re-armed from the last frame, not the start.
    triton.tokens = 5
    stream = await client.open(_request(), timeout=0.3)
    got: list[int] = []
    async with asyncio.timeout(STEP):
        with pytest.raises(EngineSilent):
            while (batch := await stream.next_batch()) is not None:
                got.extend(t for c in batch for t in c.token_ids)
    assert got == [100, 101, 102, 103, 104]


async def test_status_code_decides_the_exception_not_the_message(
    triton: FakeTriton, client: EngineClient
):
    triton.mode = "abort"
    for code, cls in (
        (grpc.StatusCode.NOT_FOUND, EngineUnavailable),
        (grpc.StatusCode.UNAVAILABLE, EngineUnavailable),
        # "not found" in the message of another code is no reason to call it unavailable.
        (grpc.StatusCode.INVALID_ARGUMENT, EngineError),
    ):
        triton.code = code
        stream = await client.open(_request(), timeout=5)
        async with asyncio.timeout(STEP):
            assert await stream.next_batch() is not None
            with pytest.raises(EngineError) as exc:
                await stream.next_batch()
        assert type(exc.value) is cls
        assert exc.value.status == Status(code.value[0])
        assert "not found" in str(exc.value)


async def test_stream_error_message_is_a_failed_request(triton: FakeTriton, client: EngineClient):
    triton.mode = "error"
    stream = await client.open(_request(), timeout=5)
    async with asyncio.timeout(STEP):
        assert await stream.next_batch() is not None
        with pytest.raises(EngineError) as exc:
            await stream.next_batch()
    err = engine_failure(exc.value)
    assert isinstance(err, BackendFailed) and "input too long" in err.message


@pytest.mark.parametrize(
    ("status", "expected", "http"),
    [
        (Status.UNAVAILABLE, BackendUnavailable, 503),
        (Status.NOT_FOUND, BackendUnavailable, 503),
        (Status.DEADLINE_EXCEEDED, BackendTimeout, 504),
        (Status.INVALID_ARGUMENT, BackendFailed, 502),
        (Status.INTERNAL, BackendFailed, 502),
        (Status.CANCELLED, BackendFailed, 502),
    ],
)
def test_one_mapping_from_grpc_status_to_openai_error(status, expected, http):
    engine_exc = _as_engine_exception(GrpcCallError(status, "boom"))
    assert engine_exc.status == status
    unreachable = {Status.UNAVAILABLE, Status.NOT_FOUND, Status.DEADLINE_EXCEEDED}
    assert isinstance(engine_exc, EngineUnavailable) == (status in unreachable)
    err = engine_failure(engine_exc)
    assert type(err) is expected and err.status == http
    assert "boom" in err.message


def test_unknown_wire_codes_are_unknown_and_proxy_errors_pass_through():
    assert GrpcCallError(99, "x").code == Status.UNKNOWN
    mine = InvalidRequest("bad")
    assert engine_failure(mine) is mine
    assert isinstance(engine_failure(RuntimeError("bug")), BackendFailed)
