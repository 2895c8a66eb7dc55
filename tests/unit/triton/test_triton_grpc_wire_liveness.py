"""grpc_wire liveness and robustness: PING keepalive against a peer that stops answering,
PING pacing against one that answers, none on idle connections, TCP keepalive on the
socket, message reassembly across any split, and write backpressure."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from hpack import Encoder, NeverIndexedHeaderTuple

from trtllm_stack.triton.grpc_wire import (
    GrpcCallError,
    GrpcChannel,
    H2Connection,
    Keepalive,
    Status,
)

STEP = 5.0
DATA, HEADERS, SETTINGS, PING = 0, 1, 4, 6
END_HEADERS, ACK = 0x4, 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RESP = Encoder().encode(
    [NeverIndexedHeaderTuple(":status", "200"), ("content-type", "application/grpc")],
    huffman=False,
)


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def msg(body: bytes) -> bytes:
    return struct.pack(">BI", 0, len(body)) + body


class Peer:
    """A server that answers each new stream with headers and one message, then says
    nothing more; it answers PINGs unless ``answer_pings`` is off."""

    def __init__(self) -> None:
        self.answer_pings = False
        self.connections = 0
        self.pings: list[float] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        loop = asyncio.get_running_loop()
        try:
            await reader.readexactly(len(PREFACE))
            writer.write(frame(SETTINGS, 0, 0))
            while True:
                head = await reader.readexactly(9)
                hi, lo, ftype, flags, sid = struct.unpack(">BHBBI", head)
                payload = await reader.readexactly(hi << 16 | lo)
                if ftype == SETTINGS and not flags & ACK:
                    writer.write(frame(SETTINGS, ACK, 0))
                elif ftype == HEADERS:
                    writer.write(frame(HEADERS, END_HEADERS, sid, RESP))
                    writer.write(frame(DATA, 0, sid, msg(b"first")))
                elif ftype == PING and not flags & ACK:
                    self.pings.append(loop.time())
                    if self.answer_pings:
                        writer.write(frame(PING, ACK, 0, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_unanswered_ping_fails_every_stream_and_the_next_call_reconnects(peer: Peer):
    loop = asyncio.get_running_loop()
    ch = GrpcChannel(f"127.0.0.1:{peer.port}", keepalive=Keepalive(time=0.2, timeout=0.3))
    try:
        streams = [await ch.open_stream("/s/m", b"x") for _ in range(3)]
        async with asyncio.timeout(STEP):
            for s in streams:
                assert await s.read_batch() == [b"first"]
            silent_from = loop.time()
            for s in streams:
                with pytest.raises(GrpcCallError) as exc:
                    await s.read_batch()
                assert exc.value.code == Status.UNAVAILABLE
                assert "PING" in exc.value.message
        # time (0.2) + timeout (0.3), with room for a loaded machine
        assert 0.4 < loop.time() - silent_from < 3.0
        assert len(peer.pings) == 1
        (dead,) = ch._conns
        assert dead.closed and dead.streams == {} and dead._ping_timer is None
        fresh = await ch.open_stream("/s/m", b"x")
        async with asyncio.timeout(STEP):
            assert await fresh.read_batch() == [b"first"]
        assert peer.connections == 2
        assert dead not in ch._conns
        fresh.cancel()
    finally:
        await ch.close()


async def test_answered_pings_keep_a_silent_stream_and_are_paced(peer: Peer):
    peer.answer_pings = True
    ch = GrpcChannel(f"127.0.0.1:{peer.port}", keepalive=Keepalive(time=0.15, timeout=0.3))
    try:
        stream = await ch.open_stream("/s/m", b"x")
        async with asyncio.timeout(STEP):
            assert await stream.read_batch() == [b"first"]
        await asyncio.sleep(1.0)
        assert stream.error is None and not stream.remote_closed
        # One PING per keepalive time of silence, never faster.
        assert 2 <= len(peer.pings) <= 1.0 / 0.15 + 1
        gaps = [b - a for a, b in zip(peer.pings, peer.pings[1:], strict=False)]
        assert all(g >= 0.14 for g in gaps), gaps
        stream.cancel()
        # No calls: no PINGs (servers count PINGs without calls as abuse).
        await asyncio.sleep(0.1)
        count = len(peer.pings)
        await asyncio.sleep(0.6)
        assert len(peer.pings) == count
        (conn,) = ch._conns
        assert not conn.closed and conn._ping_timer is None
    finally:
        await ch.close()


async def test_keepalive_off_sends_no_pings(peer: Peer):
    ch = GrpcChannel(f"127.0.0.1:{peer.port}", keepalive=None)
    try:
        stream = await ch.open_stream("/s/m", b"x")
        async with asyncio.timeout(STEP):
            assert await stream.read_batch() == [b"first"]
        await asyncio.sleep(0.5)
        assert peer.pings == [] and stream.error is None
        stream.cancel()
    finally:
        await ch.close()


async def test_socket_has_tcp_keepalive(peer: Peer):
    ch = GrpcChannel(f"127.0.0.1:{peer.port}", keepalive=Keepalive(time=7, timeout=3))
    try:
        stream = await ch.open_stream("/s/m", b"x")
        (conn,) = ch._conns
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        stream.cancel()
    finally:
        await ch.close()


# -- in process: reassembly and backpressure --------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos + 9 <= len(data):
        hi, lo, ftype, flags, sid = struct.unpack_from(">BHBBI", data, pos)
        size = hi << 16 | lo
        out.append((ftype, flags, sid, data[pos + 9 : pos + 9 + size]))
        pos += 9 + size
    return out


async def _open(message: bytes = b"req") -> tuple[H2Connection, _Transport]:
    conn = H2Connection("t", asyncio.get_running_loop())
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(frame(SETTINGS, 0, 0))
    transport.written.clear()  # the preface and settings
    return conn, transport


@pytest.mark.parametrize("seed", range(20))
async def test_messages_survive_any_split(seed: int):
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.choice([0, 1, 4, 5, 300, 20_000, 70_000])) for _ in range(8)]
    wire = b"".join(msg(b) for b in bodies)
    conn, _ = await _open()
    stream = conn.start_call("/s/m", b"x", end_stream=True)
    conn.data_received(frame(HEADERS, END_HEADERS, stream.id, RESP))
    pos = 0
    while pos < len(wire):
        n = rng.choice([1, 2, 5, 7, 100, 16_384])
        conn.data_received(frame(DATA, 0, stream.id, wire[pos : pos + n]))
        pos += n
    assert stream.messages == bodies
    assert not stream._partial


async def test_big_message_in_small_frames_is_joined_once():
    # 4 MiB in 16 KiB frames: parsed when complete, not re-scanned per frame.
    body = random.Random(1).randbytes(4 << 20)
    wire = msg(body)
    conn, _ = await _open()
    stream = conn.start_call("/s/m", b"x", end_stream=True)
    conn.data_received(frame(HEADERS, END_HEADERS, stream.id, RESP))
    parts = [wire[i : i + 16_384] for i in range(0, len(wire), 16_384)]
    for p in parts[:-1]:
        conn.data_received(frame(DATA, 0, stream.id, p))
        assert stream.messages == []
    assert stream._want == len(wire)
    conn.data_received(frame(DATA, 0, stream.id, parts[-1]))
    assert stream.messages == [body]


async def test_paused_transport_holds_request_data_until_resumed():
    conn, transport = await _open()
    conn.pause_writing()
    big = b"p" * 40_000
    stream = conn.start_call("/s/m", big, end_stream=True)
    sent = _frames(b"".join(transport.written))
    assert [f[0] for f in sent if f[2] == stream.id] == [HEADERS]
    transport.written.clear()
    conn.resume_writing()
    data = [f for f in _frames(b"".join(transport.written)) if f[0] == DATA]
    assert b"".join(f[3] for f in data) == msg(big)
    assert data[-1][1] & 0x1  # END_STREAM on the last one
    assert stream.local_closed
