"""grpc_wire, the asyncio HTTP/2 gRPC client, against two kinds of peers.

1. A real gRPC server (``grpc.aio``: the grpc C core, the HTTP/2 stack Triton uses) with
   generic bytes-in/bytes-out handlers, for what Triton does: streams, big messages,
   flow control, statuses, cancellation, shutdown and restart.
2. A scripted HTTP/2 peer on a raw socket, sending hand-made frames, for what real servers
   rarely do: padding, CONTINUATION, PING, SETTINGS changes, trailers-only and non-200
   responses, RST_STREAM, GOAWAY, protocol violations, a dropped socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import grpc
import pytest
from hpack import Decoder, Encoder

from trtllm_stack.triton import grpc_wire as W
from trtllm_stack.triton.grpc_wire import (
    GrpcCallError,
    GrpcChannel,
    GrpcStream,
    H2Connection,
    split_target,
)

UNIMPLEMENTED = W.Status.UNIMPLEMENTED
FAILED_PRECONDITION = W.Status.FAILED_PRECONDITION
STEP = 5.0  # upper bound for any single wait; the file runs in a few seconds


def _payload(i: int, size: int) -> bytes:
    return (f"<{i:07d}>".encode() * (size // 9 + 1))[:size]


def _status(code: int) -> grpc.StatusCode:
    return next(s for s in grpc.StatusCode if s.value[0] == code)


async def drain(stream: GrpcStream) -> tuple[list[bytes], GrpcCallError | None]:
    """Every message of the call, and the error it ended with (None for a clean end)."""
    got: list[bytes] = []
    async with asyncio.timeout(STEP):
        try:
            while (batch := await stream.read_batch()) is not None:
                assert batch, "read_batch returned an empty batch"
                got.extend(batch)
        except GrpcCallError as exc:
            return got, exc
    return got, None


# ----------------------------------------------------------------------------------------
# 1. A real gRPC server
# ----------------------------------------------------------------------------------------


@dataclass
class ServerState:
    # Set when the handler's task is cancelled: grpc.aio's context.cancelled() stays False.
    handler_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


def _handlers(state: ServerState) -> grpc.GenericRpcHandler:
    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message

    async def gen(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        spec = json.loads(await anext(requests))
        for i, size in enumerate(spec["sizes"]):
            yield _payload(i, size)
        state.finished.set()

    async def sink(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield f"{len(message)}:{hashlib.sha256(message).hexdigest()}".encode()

    async def sink_unary(message: bytes, context: Any) -> bytes:
        return f"{len(message)}:{hashlib.sha256(message).hexdigest()}".encode()

    async def abort(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        spec = json.loads(await anext(requests))
        for i in range(spec["before"]):
            yield _payload(i, 10)
        await context.abort(_status(spec["code"]), spec["message"])

    async def hang(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        yield b"started"
        state.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            state.handler_cancelled.set()
            raise

    async def slow_unary(message: bytes, context: Any) -> bytes:
        state.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state.handler_cancelled.set()
            raise
        return b"too late"

    ss, uu = grpc.stream_stream_rpc_method_handler, grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        "t.T",
        {
            "Echo": ss(echo),
            "Gen": ss(gen),
            "Sink": ss(sink),
            "SinkUnary": uu(sink_unary),
            "Abort": ss(abort),
            "Hang": ss(hang),
            "SlowUnary": uu(slow_unary),
        },
    )


class RealServer:
    def __init__(self) -> None:
        self.state = ServerState()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ]
        )
        server.add_generic_rpc_handlers((_handlers(self.state),))
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port and (port == 0 or self.port == port)
        await server.start()
        self.server = server

    async def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop(grace)


@pytest.fixture
async def real() -> AsyncIterator[RealServer]:
    server = RealServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def channel(real: RealServer) -> AsyncIterator[GrpcChannel]:
    ch = GrpcChannel(f"127.0.0.1:{real.port}")
    try:
        yield ch
    finally:
        await ch.close()


def _only_conn(ch: GrpcChannel) -> H2Connection:
    assert len(ch._conns) == 1
    return ch._conns[0]


async def test_server_stream_messages_then_clean_end_and_no_leak(channel: GrpcChannel):
    sizes = [1, 0, 7, 300, 5]
    stream = await channel.open_stream("/t.T/Gen", json.dumps({"sizes": sizes}).encode())
    conn = _only_conn(channel)
    got, err = await drain(stream)
    assert err is None
    assert got == [_payload(i, s) for i, s in enumerate(sizes)]
    assert stream.trailers.get("grpc-status") == "0"
    assert await stream.read_batch() is None  # stays ended
    # grpc core follows its trailers with RST_STREAM(NO_ERROR) while our half is open;
    # either way, closing our half leaves nothing behind.
    stream.close_send()
    assert conn.streams == {} and conn._blocked == {}
    stream.close_send()  # idempotent
    stream.cancel()  # a finished stream is not reset
    assert not conn.closed and conn.can_start()


async def test_half_close_first_then_read_forgets_the_stream(channel: GrpcChannel):
    stream = await channel.open_stream("/t.T/Echo", b"ping")
    stream.close_send()
    conn = _only_conn(channel)
    assert stream.id in conn.streams
    assert await drain(stream) == ([b"ping"], None)
    assert conn.streams == {}


async def test_unary_round_trip_and_stream_ids(channel: GrpcChannel):
    for i in range(3):
        body = _payload(i, 100 + i)
        answer = await channel.unary("/t.T/SinkUnary", body, timeout=STEP)
        assert answer == f"{len(body)}:{hashlib.sha256(body).hexdigest()}".encode()
    conn = _only_conn(channel)
    assert conn.streams == {} and conn._next_id == 7


@pytest.mark.parametrize("kind", ["stream", "unary"])
async def test_huge_request_waits_for_window_updates(channel: GrpcChannel, kind: str):
    body = random.Random(7).randbytes(6 * 1024 * 1024 + 3)
    expected = f"{len(body)}:{hashlib.sha256(body).hexdigest()}".encode()
    if kind == "unary":
        assert await channel.unary("/t.T/SinkUnary", body, timeout=STEP) == expected
    else:
        stream = await channel.open_stream("/t.T/Sink", body)
        conn = _only_conn(channel)
        # The peer's windows (64 KiB until it says otherwise) held most of it back.
        assert 0 < len(stream._pending) < len(body)
        assert stream.id in conn._blocked
        stream.close_send()  # END_STREAM goes after the last queued byte
        assert not stream.local_closed
        assert await drain(stream) == ([expected], None)
        assert stream.local_closed and stream._pending == b""
    conn = _only_conn(channel)
    assert conn.streams == {} and conn._blocked == {}


async def test_huge_response_messages_split_across_data_frames(channel: GrpcChannel):
    sizes = [16 * 1024 + 1, 3 * 1024 * 1024 + 17, 16 * 1024, 1]
    stream = await channel.open_stream("/t.T/Gen", json.dumps({"sizes": sizes}).encode())
    stream.close_send()
    got, err = await drain(stream)
    assert err is None
    assert [len(m) for m in got] == sizes
    assert got == [_payload(i, s) for i, s in enumerate(sizes)]


async def test_many_small_messages_arrive_in_order_in_batches(
    real: RealServer, channel: GrpcChannel
):
    n = 5000
    stream = await channel.open_stream("/t.T/Gen", json.dumps({"sizes": [12] * n}).encode())
    stream.close_send()
    # The server shares our event loop: let it produce before we read, so messages pile up.
    async with asyncio.timeout(STEP):
        await real.state.finished.wait()
    batches: list[list[bytes]] = []
    async with asyncio.timeout(STEP):
        while (batch := await stream.read_batch()) is not None:
            batches.append(batch)
    got = [m for b in batches for m in b]
    assert got == [_payload(i, 12) for i in range(n)]
    assert len(batches) < n // 10  # one wake-up per socket read, not per message


async def test_abort_status_with_percent_encoded_non_ascii_message(channel: GrpcChannel):
    message = "quota 100% used: naïve café ✓ (a=1&b=%41)\ttab"
    spec = {"before": 2, "code": FAILED_PRECONDITION, "message": message}
    stream = await channel.open_stream("/t.T/Abort", json.dumps(spec).encode())
    # The messages sent before the error come first, then the error.
    got, err = await drain(stream)
    assert got == [_payload(0, 10), _payload(1, 10)]
    assert err is not None
    assert (err.code, err.message) == (FAILED_PRECONDITION, message)
    assert str(err) == message
    assert "%" in stream.trailers["grpc-message"]  # it was percent-encoded on the wire
    with pytest.raises(GrpcCallError) as again:
        await stream.read_batch()
    assert again.value is err
    stream.cancel()
    assert _only_conn(channel).streams == {}


async def test_unknown_method_is_unimplemented(channel: GrpcChannel):
    with pytest.raises(GrpcCallError) as exc:
        await channel.unary("/t.T/Nope", b"x", timeout=STEP)
    assert exc.value.code == UNIMPLEMENTED
    stream = await channel.open_stream("/t.Other/Nope", b"x")
    got, err = await drain(stream)
    assert got == [] and err is not None and err.code == UNIMPLEMENTED
    stream.close_send()
    assert _only_conn(channel).streams == {}


async def test_cancel_reaches_the_server_handler(real: RealServer, channel: GrpcChannel):
    stream = await channel.open_stream("/t.T/Hang", b"")
    assert await stream.read_batch() == [b"started"]
    stream.cancel()
    conn = _only_conn(channel)
    assert conn.streams == {}
    async with asyncio.timeout(STEP):
        await real.state.handler_cancelled.wait()
    got, err = await drain(stream)
    assert got == [] and err is not None and err.code == W.Status.CANCELLED
    stream.cancel()  # twice is harmless
    # The connection is still good.
    assert await channel.unary("/t.T/SinkUnary", b"", timeout=STEP) == (
        b"0:" + hashlib.sha256(b"").hexdigest().encode()
    )


async def test_fail_reports_the_given_error_and_resets_the_stream(
    real: RealServer, channel: GrpcChannel
):
    stream = await channel.open_stream("/t.T/Hang", b"")
    assert await stream.read_batch() == [b"started"]
    stream.fail(GrpcCallError(W.Status.DEADLINE_EXCEEDED, "silent for too long"))
    async with asyncio.timeout(STEP):
        await real.state.handler_cancelled.wait()
    got, err = await drain(stream)
    assert got == [] and err is not None
    assert (err.code, err.message) == (W.Status.DEADLINE_EXCEEDED, "silent for too long")
    assert _only_conn(channel).streams == {}


async def test_200_concurrent_streams_on_one_connection(channel: GrpcChannel):
    n = 200
    streams = await asyncio.gather(
        *(channel.open_stream("/t.T/Echo", _payload(i, 20 + i)) for i in range(n))
    )
    conn = _only_conn(channel)
    assert len(conn.streams) == n
    assert sorted(s.id for s in streams) == list(range(1, 2 * n, 2))

    async def finish(stream: GrpcStream) -> list[bytes]:
        async with asyncio.timeout(STEP):
            echoed = await stream.read_batch()  # while all 200 calls are open
        stream.close_send()
        assert await drain(stream) == ([], None)
        return echoed or []

    results = await asyncio.gather(*(finish(s) for s in streams))
    assert results == [[_payload(i, 20 + i)] for i in range(n)]
    assert _only_conn(channel) is conn
    assert conn.streams == {} and conn._blocked == {}


async def test_server_stop_mid_stream_then_restart_on_same_port(
    real: RealServer, channel: GrpcChannel
):
    streams = [await channel.open_stream("/t.T/Hang", b"") for _ in range(3)]
    for stream in streams:
        assert await stream.read_batch() == [b"started"]
    first_conn = _only_conn(channel)
    port = real.port
    await real.stop(0.1)
    for stream in streams:
        got, err = await drain(stream)
        assert got == [] and err is not None and err.code == W.Status.UNAVAILABLE, err
    async with asyncio.timeout(STEP):
        await first_conn.lost
    assert first_conn.closed and first_conn.streams == {}

    # Down: every call fails at once with UNAVAILABLE.
    t0 = time.monotonic()
    with pytest.raises(GrpcCallError) as exc:
        await channel.unary("/t.T/SinkUnary", b"x", timeout=STEP)
    assert exc.value.code == W.Status.UNAVAILABLE
    assert time.monotonic() - t0 < 1.0

    # Back on the same port: the same channel reconnects.
    await real.start(port)
    body = b"after restart"
    answer = await channel.unary("/t.T/SinkUnary", body, timeout=STEP)
    assert answer == f"{len(body)}:{hashlib.sha256(body).hexdigest()}".encode()
    conn = _only_conn(channel)
    assert conn is not first_conn and conn.streams == {}


async def test_unary_deadline_exceeded_cancels_the_server_call(
    real: RealServer, channel: GrpcChannel
):
    t0 = time.monotonic()
    with pytest.raises(GrpcCallError) as exc:
        await channel.unary("/t.T/SlowUnary", b"x", timeout=0.2)
    elapsed = time.monotonic() - t0
    assert exc.value.code == W.Status.DEADLINE_EXCEEDED
    assert "0.2 s" in exc.value.message
    assert 0.2 <= elapsed < 2.0
    assert real.state.started.is_set()
    async with asyncio.timeout(STEP):
        await real.state.handler_cancelled.wait()
    assert _only_conn(channel).streams == {}


async def test_channel_close_fails_open_calls_and_refuses_new_ones(
    real: RealServer, channel: GrpcChannel
):
    stream = await channel.open_stream("/t.T/Hang", b"")
    assert await stream.read_batch() == [b"started"]
    conn = _only_conn(channel)
    await channel.close()
    got, err = await drain(stream)
    assert got == [] and err is not None
    assert (err.code, err.message) == (W.Status.UNAVAILABLE, "the client closed the connection")
    assert conn.closed
    async with asyncio.timeout(STEP):
        await real.state.handler_cancelled.wait()
    with pytest.raises(GrpcCallError) as exc:
        await channel.open_stream("/t.T/Echo", b"")
    assert (exc.value.code, exc.value.message) == (W.Status.UNAVAILABLE, "the channel is closed")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_to_closed_port_is_unavailable_quickly():
    port = _closed_port()
    ch = GrpcChannel(f"127.0.0.1:{port}")
    try:
        for call in (
            lambda: ch.unary("/t.T/SinkUnary", b"", timeout=STEP),
            lambda: ch.open_stream("/t.T/Echo", b""),
        ):
            t0 = time.monotonic()
            with pytest.raises(GrpcCallError) as exc:
                await call()
            assert time.monotonic() - t0 < 1.0
            assert exc.value.code == W.Status.UNAVAILABLE
            assert f"cannot connect to 127.0.0.1:{port}" in exc.value.message
        assert ch._conns == [] and ch._connecting is None
    finally:
        await ch.close()


async def test_connect_timeout_is_unavailable():
    # A listener that never accepts, its backlog filled: the kernel drops further SYNs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        ch = GrpcChannel(f"127.0.0.1:{address[1]}", connect_timeout=0.2)
        try:
            t0 = time.monotonic()
            with pytest.raises(GrpcCallError) as exc:
                await ch.unary("/t.T/SinkUnary", b"", timeout=STEP)
            assert time.monotonic() - t0 < 1.5
            assert (exc.value.code, exc.value.message) == (
                W.Status.UNAVAILABLE,
                f"cannot connect to 127.0.0.1:{address[1]}: timeout",
            )
        finally:
            for filler in fillers:
                filler.close()
            await ch.close()


# ----------------------------------------------------------------------------------------
# 2. A scripted HTTP/2 peer
# ----------------------------------------------------------------------------------------

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 3, 4, 5
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Frame(NamedTuple):
    type: int
    flags: int
    sid: int
    payload: bytes


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def grpc_message(body: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(body)) + body


def settings(**values: int) -> bytes:
    ids = {"window": S_INITIAL_WINDOW_SIZE, "frame": S_MAX_FRAME_SIZE}
    ids["streams"] = S_MAX_CONCURRENT_STREAMS
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items()))


RESPONSE = [(":status", "200"), ("content-type", "application/grpc")]


class PeerConn:
    """The server end of one connection, driven by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.seen: list[Frame] = []  # every frame received, in order

    async def handshake(self, server_settings: bytes) -> tuple[Frame, Frame]:
        async with asyncio.timeout(STEP):
            assert await self.reader.readexactly(len(PREFACE)) == PREFACE
        client_settings = await self.next_frame()
        window_update = await self.next_frame()
        self.send(server_settings, frame(SETTINGS, ACK, 0))
        return client_settings, window_update

    async def next_frame(self) -> Frame:
        async with asyncio.timeout(STEP):
            head = await self.reader.readexactly(9)
            hi, lo, ftype, flags, sid = struct.unpack(">BHBBI", head)
            payload = await self.reader.readexactly(hi << 16 | lo)
        f = Frame(ftype, flags, sid & 0x7FFFFFFF, payload)
        self.seen.append(f)
        return f

    async def expect(self, ftype: int, flags: int | None = None) -> Frame:
        """The next frame of this type (and flags), skipping others."""
        while True:
            f = await self.next_frame()
            if f.type == ftype and (flags is None or f.flags & flags == flags):
                return f

    async def request(self) -> tuple[int, dict[str, str]]:
        f = await self.expect(HEADERS)
        assert f.flags & END_HEADERS
        return f.sid, cast(dict[str, str], dict(self.decoder.decode(f.payload)))

    async def body(self, sid: int) -> tuple[bytes, list[Frame]]:
        """The request DATA of one stream, up to END_STREAM."""
        parts, frames = [], []
        while True:
            f = await self.expect(DATA)
            assert f.sid == sid
            frames.append(f)
            parts.append(f.payload)
            if f.flags & END_STREAM:
                return b"".join(parts), frames

    async def eof(self) -> list[Frame]:
        """Frames received until the client closed the socket."""
        frames = []
        async with asyncio.timeout(STEP):
            while True:
                try:
                    frames.append(await self.next_frame())
                except asyncio.IncompleteReadError as exc:
                    assert exc.partial == b""
                    return frames

    def headers(self, sid: int, headers: list[tuple[str, str]], flags: int = 0) -> bytes:
        return frame(HEADERS, END_HEADERS | flags, sid, self.encoder.encode(headers))

    def trailers(self, sid: int, status: int = 0, message: str | None = None) -> bytes:
        fields = [("grpc-status", str(status))]
        if message is not None:
            fields.append(("grpc-message", message))
        return self.headers(sid, fields, END_STREAM)

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))


class ScriptedPeer:
    def __init__(self) -> None:
        self.accepted: asyncio.Queue[PeerConn] = asyncio.Queue()
        self.conns: list[PeerConn] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = PeerConn(reader, writer)
            self.conns.append(conn)
            await self.accepted.put(conn)

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def accept(self, server_settings: bytes | None = None) -> PeerConn:
        async with asyncio.timeout(STEP):
            conn = await self.accepted.get()
        await conn.handshake(settings() if server_settings is None else server_settings)
        return conn

    async def stop(self) -> None:
        for conn in self.conns:
            conn.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def peer() -> AsyncIterator[ScriptedPeer]:
    p = ScriptedPeer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def connect(peer: ScriptedPeer) -> AsyncIterator[Callable[[], Awaitable[H2Connection]]]:
    """Open an :class:`H2Connection` to the peer directly (no channel)."""
    conns: list[H2Connection] = []

    async def open_conn() -> H2Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: H2Connection("peer.test:1", loop), "127.0.0.1", peer.port
        )
        conns.append(conn)
        return conn

    try:
        yield open_conn
    finally:
        for conn in conns:
            conn.close()


async def _ready(connect: Any, peer: ScriptedPeer, **values: int) -> tuple[H2Connection, PeerConn]:
    """A connection whose peer settings (if any) are applied: the client ACKed them."""
    conn = await connect()
    pc = await peer.accept(settings(**values))
    await pc.expect(SETTINGS, ACK)
    return conn, pc


async def test_client_preface_settings_and_request_frames(connect: Any, peer: ScriptedPeer):
    conn = await connect()
    async with asyncio.timeout(STEP):
        pc = await peer.accepted.get()
    client_settings, window_update = await pc.handshake(settings(streams=100))
    assert client_settings == Frame(
        SETTINGS, 0, 0, struct.pack(">HIHI", 2, 0, S_INITIAL_WINDOW_SIZE, 2**31 - 1)
    )
    assert window_update == Frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1 - 65535))
    assert await pc.expect(SETTINGS) == Frame(SETTINGS, ACK, 0, b"")
    assert conn._peer_max_streams == 100

    stream = conn.start_call("/pkg.Svc/Method", b"hello", end_stream=True)
    sid, headers = await pc.request()
    assert sid == stream.id == 1
    assert headers == {
        ":method": "POST",
        ":scheme": "http",
        ":path": "/pkg.Svc/Method",
        ":authority": "peer.test:1",
        "content-type": "application/grpc",
        "te": "trailers",
        "user-agent": "trtllm-stack",
    }
    body, frames = await pc.body(sid)
    assert body == grpc_message(b"hello") and len(frames) == 1

    # The cached header block is valid for the next call too (never-indexed literals).
    second = conn.start_call("/pkg.Svc/Method", b"", end_stream=False)
    sid2, headers2 = await pc.request()
    assert (sid2, headers2) == (3, headers)
    data = await pc.expect(DATA)
    assert data == Frame(DATA, 0, 3, grpc_message(b""))
    second.close_send()
    assert await pc.expect(DATA) == Frame(DATA, END_STREAM, 3, b"")


async def test_ping_is_answered_with_the_same_payload(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    pc.send(frame(PING, 0, 0, b"\x01\x02\x03\x04\x05\x06\x07\x08"))
    assert await pc.expect(PING) == Frame(PING, ACK, 0, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    pc.send(frame(PING, ACK, 0, b"ackackac"))  # an ACK is not answered
    pc.send(frame(PING, 0, 0, b"second!!"))
    assert await pc.expect(PING) == Frame(PING, ACK, 0, b"second!!")
    assert not conn.closed


async def test_padded_data_and_messages_split_across_frames(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    await pc.body(sid)
    wire = grpc_message(b"hello") + grpc_message(b"x" * 40) + grpc_message(b"")
    pad = b"\xee" * 10  # padding content is ignored
    pc.send(
        pc.headers(sid, RESPONSE),
        frame(DATA, PADDED, sid, bytes([len(pad)]) + wire[:7] + pad),
        frame(DATA, PADDED, sid, bytes([0]) + wire[7:30]),
        frame(DATA, PADDED, sid, bytes([3]) + b"" + b"\0\0\0"),  # padding only
        frame(DATA, 0, sid, wire[30:]),
        pc.trailers(sid),
    )
    assert await drain(stream) == ([b"hello", b"x" * 40, b""], None)
    assert conn.streams == {}


async def test_one_socket_read_is_one_batch(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    messages = [_payload(i, i % 50) for i in range(300)]
    wire = b"".join(grpc_message(m) for m in messages)
    pc.send(
        pc.headers(sid, RESPONSE),
        *(frame(DATA, 0, sid, wire[i : i + 1000]) for i in range(0, len(wire), 1000)),
    )
    pc.send(frame(PING, 0, 0, b"barrier!"))
    await pc.expect(PING)  # everything above was parsed
    async with asyncio.timeout(STEP):
        assert await stream.read_batch() == messages
    pc.send(pc.trailers(sid))
    assert await drain(stream) == ([], None)


async def test_header_blocks_split_into_continuation_frames(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    block = pc.encoder.encode([*RESPONSE, ("x-long", "v" * 100)])
    status = "%E2%9C%93 not 100%25 ready"
    trailers = pc.encoder.encode([("grpc-status", "3"), ("grpc-message", status)])
    pc.send(
        # Padded, with priority fields, continued twice.
        frame(HEADERS, PADDED | PRIORITY_FLAG, sid, b"\x04" + b"\0" * 5 + block[:5] + b"\0" * 4),
        frame(CONTINUATION, 0, sid, block[5:50]),
        frame(CONTINUATION, END_HEADERS, sid, block[50:]),
        frame(DATA, 0, sid, grpc_message(b"one")),
        # END_STREAM on HEADERS applies when the block ends in a CONTINUATION.
        frame(HEADERS, END_STREAM, sid, trailers[:3]),
        frame(CONTINUATION, END_HEADERS, sid, trailers[3:]),
    )
    got, err = await drain(stream)
    assert got == [b"one"]
    assert err is not None and (err.code, err.message) == (3, "✓ not 100% ready")
    assert stream.trailers == {"grpc-status": "3", "grpc-message": status}
    assert conn.streams == {} and not conn.closed


async def test_interrupted_header_block_is_a_protocol_error(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    block = pc.encoder.encode(RESPONSE)
    pc.send(frame(HEADERS, 0, sid, block[:2]), frame(PING, 0, 0, b"\0" * 8))
    got, err = await drain(stream)
    assert got == [] and err is not None and err.code == W.Status.UNAVAILABLE
    assert "header block interrupted" in err.message
    frames = await pc.eof()
    assert Frame(GOAWAY, 0, 0, struct.pack(">II", 0, 1)) in frames
    assert conn.streams == {} and not conn.can_start()


async def test_continuation_without_headers_is_a_protocol_error(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    pc.send(frame(CONTINUATION, END_HEADERS, sid, pc.encoder.encode(RESPONSE)))
    _, err = await drain(stream)
    assert err is not None and "unexpected CONTINUATION" in err.message


async def test_initial_window_size_and_window_updates_pace_our_data(
    connect: Any, peer: ScriptedPeer
):
    conn, pc = await _ready(connect, peer, window=1000)
    body = _payload(0, 50_000)
    stream = conn.start_call("/s/m", body, end_stream=False)
    stream.close_send()  # END_STREAM must wait for the queued bytes
    sid, _ = await pc.request()
    wire = grpc_message(body)

    async def data_until(total: int) -> list[Frame]:
        frames, got = [], 0
        while got < total:
            f = await pc.expect(DATA)
            frames.append(f)
            got += len(f.payload)
        assert got == total
        return frames

    first = await data_until(1000)
    assert not first[-1].flags & END_STREAM
    # Raising INITIAL_WINDOW_SIZE credits open streams with the difference.
    pc.send(settings(window=3000))
    more = await data_until(2000)
    assert not more[-1].flags & END_STREAM
    assert stream.send_window == 0 and stream.id in conn._blocked
    # Lowering it makes the window negative: a WINDOW_UPDATE smaller than the debt sends
    # nothing, the next one resumes from where the debt is paid.
    pc.send(settings(window=1000))
    pc.send(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 1500)))
    await pc.expect(SETTINGS, ACK)
    ping = b"barrier!"
    pc.send(frame(PING, 0, 0, ping))
    assert (await pc.expect(PING)).payload == ping
    assert [f for f in pc.seen if f.type == DATA][len(first) + len(more) :] == []
    assert stream.send_window == -500
    pc.send(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 100_000)))
    rest = await data_until(len(wire) - 3000)
    assert rest[-1].flags & END_STREAM
    assert all(not f.flags & END_STREAM for f in rest[:-1])
    assert b"".join(f.payload for f in first + more + rest) == wire
    assert all(len(f.payload) <= 16384 for f in rest)
    assert stream.local_closed and conn._blocked == {}


async def test_connection_window_and_max_frame_size(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer, window=2**31 - 1, frame=20_000)
    body = random.Random(3).randbytes(100_000)
    wire = grpc_message(body)
    stream = conn.start_call("/s/m", body, end_stream=True)
    sid, _ = await pc.request()
    frames, got = [], 0
    while got < 65535:  # the connection window, which SETTINGS do not change
        f = await pc.expect(DATA)
        frames.append(f)
        got += len(f.payload)
    assert got == 65535
    assert [len(f.payload) for f in frames] == [20_000, 20_000, 20_000, 5535]
    assert conn._send_window == 0 and stream.id in conn._blocked
    pc.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 10**6)))
    rest, _ = await pc.body(sid)
    assert wire == b"".join(f.payload for f in frames) + rest
    data = [f for f in pc.seen if f.type == DATA]
    assert max(len(f.payload) for f in data) == 20_000
    assert [f.flags & END_STREAM for f in data] == [0] * (len(data) - 1) + [END_STREAM]
    assert stream.local_closed and conn._blocked == {}


async def test_receive_windows_are_replenished(
    connect: Any, peer: ScriptedPeer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(W, "_REPLENISH", 1000)
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    # 1000 bytes of DATA payload (pad length byte + 900 + 99 padding): not above the mark.
    first = frame(DATA, PADDED, sid, bytes([99]) + grpc_message(b"a" * 895) + b"\0" * 99)
    pc.send(pc.headers(sid, RESPONSE), first)
    pc.send(frame(PING, 0, 0, b"barrier1"))
    await pc.expect(PING)
    assert [f for f in pc.seen if f.type == WINDOW_UPDATE][1:] == []  # only the preface's
    pc.send(frame(DATA, 0, sid, grpc_message(b"z" * 195)))  # 200 more: 1200, padding counted
    update = await pc.expect(WINDOW_UPDATE)
    assert (update.sid, update.payload) == (sid, struct.pack(">I", 1200))
    update = await pc.expect(WINDOW_UPDATE)
    assert (update.sid, update.payload) == (0, struct.pack(">I", 1200))
    pc.send(pc.trailers(sid))
    assert await drain(stream) == ([b"a" * 895, b"z" * 195], None)


async def test_trailers_only_responses(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    # An error as trailers-only: HEADERS with :status 200, grpc-status and END_STREAM.
    failing = conn.start_call("/s/a", b"", end_stream=False)
    ok = conn.start_call("/s/b", b"", end_stream=True)
    no_status = conn.start_call("/s/c", b"", end_stream=True)
    for _ in range(3):
        await pc.request()
    fields = [*RESPONSE, ("grpc-status", "5"), ("grpc-message", "no%20such%20model")]
    pc.send(
        pc.headers(failing.id, fields, END_STREAM),
        pc.headers(ok.id, [*RESPONSE, ("grpc-status", "0")], END_STREAM),
        pc.headers(no_status.id, RESPONSE, END_STREAM),
    )
    got, err = await drain(failing)
    assert got == [] and err is not None
    assert (err.code, err.message) == (W.Status.NOT_FOUND, "no such model")
    assert failing.id in conn.streams  # until our half is closed too
    failing.close_send()
    assert await drain(ok) == ([], None)
    got, err = await drain(no_status)
    assert err is not None and (err.code, err.message) == (
        W.Status.UNKNOWN,
        "response without grpc-status",
    )
    assert conn.streams == {}


async def test_unary_needs_exactly_one_message(peer: ScriptedPeer):
    ch = GrpcChannel(f"127.0.0.1:{peer.port}")
    try:
        call = asyncio.ensure_future(ch.unary("/s/m", b"q", timeout=STEP))
        pc = await peer.accept()
        sid, _ = await pc.request()
        pc.send(pc.headers(sid, [*RESPONSE, ("grpc-status", "0")], END_STREAM))
        with pytest.raises(GrpcCallError) as exc:
            await call
        assert (exc.value.code, exc.value.message) == (
            W.Status.INTERNAL,
            "expected one response message, got 0",
        )
        call = asyncio.ensure_future(ch.unary("/s/m", b"q", timeout=STEP))
        sid, _ = await pc.request()
        pc.send(
            pc.headers(sid, RESPONSE),
            frame(DATA, 0, sid, grpc_message(b"a") + grpc_message(b"b")),
            pc.trailers(sid),
        )
        with pytest.raises(GrpcCallError) as exc:
            await call
        assert exc.value.message == "expected one response message, got 2"
        call = asyncio.ensure_future(ch.unary("/s/m", b"q", timeout=STEP))
        sid, _ = await pc.request()
        pc.send(pc.headers(sid, RESPONSE), frame(DATA, 0, sid, grpc_message(b"a")))
        pc.send(pc.trailers(sid))
        assert await call == b"a"
        assert _only_conn(ch).streams == {}
        # No RST_STREAM for calls that ended normally.
        assert [f for f in pc.seen if f.type == RST_STREAM] == []
    finally:
        await ch.close()


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("503", W.Status.UNAVAILABLE),
        ("404", UNIMPLEMENTED),
        ("400", W.Status.INTERNAL),
        ("500", W.Status.UNKNOWN),
    ],
)
async def test_non_200_status(connect: Any, peer: ScriptedPeer, status: str, code: int):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=False)
    sid, _ = await pc.request()
    pc.send(pc.headers(sid, [(":status", status), ("content-type", "text/html")]))
    pc.send(frame(DATA, 0, sid, b"<html>not grpc</html>"))  # dropped: stream is reset
    got, err = await drain(stream)
    assert got == [] and err is not None
    assert (err.code, err.message) == (code, f"HTTP status {status}")
    assert await pc.expect(RST_STREAM) == Frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
    assert conn.streams == {}
    # Other calls on the connection are unaffected.
    other = conn.start_call("/s/m", b"", end_stream=True)
    sid2, _ = await pc.request()
    pc.send(pc.headers(sid2, RESPONSE), frame(DATA, 0, sid2, grpc_message(b"ok")))
    pc.send(pc.trailers(sid2))
    assert await drain(other) == ([b"ok"], None)


@pytest.mark.parametrize(
    ("reset_code", "code", "message"),
    [
        (0x7, W.Status.UNAVAILABLE, "the server refused the stream"),
        (0x8, W.Status.CANCELLED, "the server cancelled the stream"),
        (0x2, W.Status.INTERNAL, "the server reset the stream (HTTP/2 error code 2)"),
    ],
)
async def test_rst_stream(
    connect: Any, peer: ScriptedPeer, reset_code: int, code: int, message: str
):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", _payload(0, 200_000), end_stream=False)
    sid, _ = await pc.request()
    assert stream.id in conn._blocked  # waiting for window: the reset must drop that too
    pc.send(
        pc.headers(sid, RESPONSE),
        frame(DATA, 0, sid, grpc_message(b"before") + grpc_message(b"reset")),
        frame(RST_STREAM, 0, sid, struct.pack(">I", reset_code)),
    )
    got, err = await drain(stream)
    assert got == [b"before", b"reset"]
    assert err is not None and (err.code, err.message) == (code, message)
    assert conn.streams == {} and conn._blocked == {}
    stream.close_send()
    stream.cancel()
    pc.send(frame(PING, 0, 0, b"barrier!"))
    await pc.expect(PING)
    # We answer a reset with nothing: no END_STREAM, no RST_STREAM of our own.
    assert not any(
        f.type == RST_STREAM or (f.type == DATA and f.flags & END_STREAM) for f in pc.seen
    )


async def test_goaway_fails_streams_above_last_id_and_lets_lower_ones_finish(
    peer: ScriptedPeer,
):
    ch = GrpcChannel(f"127.0.0.1:{peer.port}")
    try:
        low = await ch.open_stream("/s/m", b"1")
        pc = await peer.accept()
        high = await ch.open_stream("/s/m", b"3")
        conn = _only_conn(ch)
        assert [(await pc.request())[0] for _ in range(2)] == [1, 3]
        pc.send(frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0) + b"debug data"))
        got, err = await drain(high)
        assert got == [] and err is not None and err.code == W.Status.UNAVAILABLE
        assert "GOAWAY" in err.message
        assert not conn.can_start() and list(conn.streams) == [1]

        # New calls go to a new connection.
        fresh = await ch.open_stream("/s/m", b"new")
        pc2 = await peer.accept()
        sid, _ = await pc2.request()
        assert (sid, len(ch._conns)) == (1, 2)
        fresh.cancel()

        # The stream below last_stream_id completes normally; then the old connection,
        # idle and draining, is closed by us.
        pc.send(pc.headers(1, RESPONSE), frame(DATA, 0, 1, grpc_message(b"still here")))
        pc.send(pc.trailers(1))
        assert await drain(low) == ([b"still here"], None)
        low.close_send()
        frames = await pc.eof()
        assert Frame(DATA, END_STREAM, 1, b"") in frames
        async with asyncio.timeout(STEP):
            await conn.lost
    finally:
        await ch.close()


async def test_max_concurrent_streams_opens_another_connection(peer: ScriptedPeer):
    ch = GrpcChannel(f"127.0.0.1:{peer.port}")
    try:
        first = await ch.open_stream("/s/m", b"")
        pc = await peer.accept(settings(streams=2))
        await pc.expect(SETTINGS, ACK)
        second = await ch.open_stream("/s/m", b"")
        assert len(ch._conns) == 1 and (first.id, second.id) == (1, 3)
        third = await ch.open_stream("/s/m", b"")
        await peer.accept()
        assert len(ch._conns) == 2 and third.id == 1 and third._conn is not first._conn
        second.cancel()  # room again on the first connection
        fourth = await ch.open_stream("/s/m", b"")
        assert fourth._conn is first._conn and fourth.id == 5
    finally:
        await ch.close()


async def test_compressed_message_fails_the_whole_connection(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    a = conn.start_call("/s/m", b"", end_stream=True)
    b = conn.start_call("/s/m", b"", end_stream=False)
    await pc.request()
    await pc.request()
    pc.send(
        pc.headers(a.id, RESPONSE),
        pc.headers(b.id, RESPONSE),
        frame(DATA, 0, b.id, grpc_message(b"fine")),
        frame(DATA, 0, a.id, grpc_message(b"squeezed", compressed=1)),
    )
    expected = (
        "HTTP/2 protocol error from the server: "
        "compressed gRPC message (no compression was negotiated)"
    )
    for stream, messages in ((a, []), (b, [b"fine"])):
        got, err = await drain(stream)
        assert got == messages and err is not None
        assert (err.code, err.message) == (W.Status.UNAVAILABLE, expected)
    frames = await pc.eof()
    assert Frame(GOAWAY, 0, 0, struct.pack(">II", 0, 1)) in frames
    async with asyncio.timeout(STEP):
        await conn.lost
    assert conn.closed and conn.streams == {}
    with pytest.raises(GrpcCallError):
        conn.start_call("/s/m", b"", end_stream=True)


async def test_message_larger_than_max_message(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    prefix = struct.pack(">BI", 0, W.MAX_MESSAGE + 1)
    pc.send(pc.headers(sid, RESPONSE), frame(DATA, 0, sid, prefix + b"abc"))
    _, err = await drain(stream)
    assert err is not None and err.code == W.Status.UNAVAILABLE
    assert err.message.endswith(f"gRPC message of {W.MAX_MESSAGE + 1} bytes exceeds 67108864")
    await pc.eof()


async def test_message_of_exactly_max_message_is_accepted_by_the_parser():
    # Feeding the parser directly: 64 MiB over a socket would only slow the suite down.
    loop = asyncio.get_running_loop()
    stream = GrpcStream(H2Connection("x:1", loop), 1, 65535)
    stream._feed(struct.pack(">BI", 0, W.MAX_MESSAGE))
    assert stream.messages == [] and len(stream._partial) == 5
    stream._feed(b"\0" * (W.MAX_MESSAGE - 1))
    assert stream.messages == []
    stream._feed(b"\1" + grpc_message(b"next")[:3])
    assert [len(m) for m in stream.messages] == [W.MAX_MESSAGE]
    assert stream.messages[0][-2:] == b"\0\1" and stream._partial == grpc_message(b"next")[:3]


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        random.Random(11).randbytes(4096),
        frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff"),  # not HPACK
        frame(SETTINGS, 0, 0, b"\0\0\0"),  # not a multiple of 6 bytes
        frame(SETTINGS, 0, 0, struct.pack(">HI", S_MAX_FRAME_SIZE, 100)),
        frame(SETTINGS, 0, 0, struct.pack(">HI", S_INITIAL_WINDOW_SIZE, 2**31)),
        frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2"),
    ],
    ids=["http1", "random", "hpack", "settings-length", "frame-size", "window", "push"],
)
async def test_garbage_from_the_server_fails_the_connection(
    connect: Any, peer: ScriptedPeer, garbage: bytes
):
    conn = await connect()
    async with asyncio.timeout(STEP):
        pc = await peer.accepted.get()
    assert await pc.reader.readexactly(len(PREFACE)) == PREFACE
    stream = conn.start_call("/s/m", b"", end_stream=False)
    pc.send(garbage)  # and the socket stays open: we must not wait for more
    got, err = await drain(stream)
    assert got == [] and err is not None and err.code == W.Status.UNAVAILABLE
    assert err.message.startswith("HTTP/2 protocol error from the server: ")
    await pc.eof()
    async with asyncio.timeout(STEP):
        await conn.lost


async def test_peer_closing_the_socket_fails_open_calls(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    a = conn.start_call("/s/m", b"", end_stream=False)
    b = conn.start_call("/s/m", b"", end_stream=False)
    await pc.request()
    await pc.request()
    pc.send(
        pc.headers(a.id, RESPONSE),
        frame(DATA, 0, a.id, grpc_message(b"whole") + grpc_message(b"half of it")[:8]),
    )
    pc.send(frame(PING, 0, 0, b"barrier!"))
    await pc.expect(PING)  # frames are handled in order: the DATA was parsed
    assert a.messages == [b"whole"]
    pc.writer.close()
    for stream, messages in ((a, [b"whole"]), (b, [])):
        got, err = await drain(stream)
        assert got == messages and err is not None
        assert (err.code, err.message) == (W.Status.UNAVAILABLE, "connection to the server lost")
    async with asyncio.timeout(STEP):
        await conn.lost
    assert conn.closed and not conn.can_start() and conn.streams == {}


async def test_stream_ends_without_status_or_inside_a_message(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    a = conn.start_call("/s/m", b"", end_stream=True)
    b = conn.start_call("/s/m", b"", end_stream=True)
    await pc.request()
    await pc.request()
    pc.send(
        pc.headers(a.id, RESPONSE),
        frame(DATA, END_STREAM, a.id, grpc_message(b"m")),
        pc.headers(b.id, RESPONSE),
        frame(DATA, 0, b.id, grpc_message(b"m") + grpc_message(b"cut")[:6]),
        pc.trailers(b.id),
    )
    got, err = await drain(a)
    assert got == [b"m"] and err is not None
    assert (err.code, err.message) == (W.Status.INTERNAL, "no gRPC status")
    got, err = await drain(b)
    assert got == [b"m"] and err is not None
    assert (err.code, err.message) == (W.Status.INTERNAL, "the stream ended inside a gRPC message")
    assert conn.streams == {} and not conn.closed


async def test_hpack_state_survives_headers_for_forgotten_streams(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    gone = conn.start_call("/s/m", b"", end_stream=False)
    kept = conn.start_call("/s/m", b"", end_stream=True)
    await pc.request()
    await pc.request()
    gone.cancel()
    assert await pc.expect(RST_STREAM) == Frame(RST_STREAM, 0, gone.id, struct.pack(">I", 8))
    custom = [*RESPONSE, ("x-model", "llama"), ("grpc-status", "7"), ("grpc-message", "nope")]
    # The first block adds these fields to the peer's dynamic table; the second refers to
    # them by index, so it only decodes if the first one was decoded too.
    pc.send(
        pc.headers(gone.id, custom, END_STREAM),
        frame(DATA, 0, gone.id, grpc_message(b"ignored")),
    )
    second = pc.encoder.encode(custom)
    assert len(second) < 10  # all indexed
    pc.send(frame(HEADERS, END_HEADERS | END_STREAM, kept.id, second))
    got, err = await drain(kept)
    assert got == [] and err is not None and (err.code, err.message) == (7, "nope")
    assert kept.trailers["x-model"] == "llama"
    assert conn.streams == {} and not conn.closed


async def test_fail_on_scripted_stream_sends_cancel(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=False)
    sid, _ = await pc.request()
    stream.fail(GrpcCallError(W.Status.DEADLINE_EXCEEDED, "too slow"))
    assert await pc.expect(RST_STREAM) == Frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
    _, err = await drain(stream)
    assert err is not None and (err.code, err.message) == (W.Status.DEADLINE_EXCEEDED, "too slow")
    assert conn.streams == {}


async def test_oversized_request_headers_are_refused_without_a_leak(
    connect: Any, peer: ScriptedPeer
):
    conn, pc = await _ready(connect, peer)
    with pytest.raises(GrpcCallError) as exc:
        conn.start_call("/s/" + "m" * 20_000, b"", end_stream=True)
    assert exc.value.code == W.Status.INTERNAL
    assert conn.streams == {}
    ok = conn.start_call("/s/m", b"", end_stream=True)
    sid, headers = await pc.request()
    assert sid == ok.id and headers[":path"] == "/s/m"


async def test_stream_ids_exhausted_drain_the_connection(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    conn._next_id = 2**31 - 1
    last = conn.start_call("/s/m", b"", end_stream=True)
    assert last.id == 2**31 - 1 and not conn.can_start()
    sid, _ = await pc.request()
    assert sid == 2**31 - 1
    pc.send(pc.headers(sid, [*RESPONSE, ("grpc-status", "0")], END_STREAM))
    assert await drain(last) == ([], None)
    await pc.eof()  # idle and draining: closed


async def test_unknown_frames_and_priority_are_ignored(connect: Any, peer: ScriptedPeer):
    conn, pc = await _ready(connect, peer)
    stream = conn.start_call("/s/m", b"", end_stream=True)
    sid, _ = await pc.request()
    pc.send(
        frame(0xFA, 0xFF, 0, b"extension"),
        frame(PRIORITY, 0, sid, b"\0\0\0\0\x10"),
        pc.headers(sid, RESPONSE),
        frame(0xFB, 0, sid, b""),
        frame(DATA, 0, sid, grpc_message(b"ok")),
        frame(WINDOW_UPDATE, 0, 99, struct.pack(">I", 5)),  # unknown stream
        frame(RST_STREAM, 0, 99, struct.pack(">I", 8)),
        frame(DATA, 0, 97, grpc_message(b"for a stream we do not know")),
        pc.trailers(sid),
    )
    assert await drain(stream) == ([b"ok"], None)
    assert not conn.closed and conn.can_start()


# ----------------------------------------------------------------------------------------
# split_target
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:8001", ("localhost", 8001)),
        ("10.0.0.5:1", ("10.0.0.5", 1)),
        ("[::1]:8001", ("::1", 8001)),
        ("[2001:db8::7]:65535", ("2001:db8::7", 65535)),
        ("grpc://triton:8001", ("triton", 8001)),
        ("grpc://[::1]:8001/", ("::1", 8001)),
    ],
)
def test_split_target(target: str, expected: tuple[str, int]):
    assert split_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "",
        "localhost",
        "localhost:",
        ":8001",
        "grpc://:8001",
        "host:port",
        "host:-1",
        "[]:80",
        "host:65536",
        "host:0",
        "grpc://",
    ],
)
def test_split_target_rejects_bad_addresses(target: str):
    with pytest.raises(ValueError, match="host:port"):
        split_target(target)


def test_channel_rejects_bad_target_at_construction():
    with pytest.raises(ValueError):
        GrpcChannel("no-port")
