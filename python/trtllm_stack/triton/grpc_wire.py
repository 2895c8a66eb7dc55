"""gRPC over HTTP/2 on asyncio, client side, for one server: the proxy's per-token path.

Why not ``grpc.aio``: it reads one message per ``await`` and hands each one over from its
poller thread. Triton sends one response per generated token, so that costs 60-85 us of
CPU per token (python/docs/bench.md). Here every call shares one :class:`asyncio.Protocol`
per connection: a socket read parses all the frames that arrived, for every stream, and
wakes each stream's reader once, however many messages it got.

Scope, deliberately small: cleartext HTTP/2 (RFC 9113, client side, prior knowledge),
gRPC's length-prefixed messages without compression, unary and bidirectional calls,
flow control both ways, RST_STREAM to cancel, GOAWAY, PING replies. Header blocks are
HPACK-coded with the ``hpack`` package (once per call, not per message). No TLS, no
server push.

Liveness: while calls are open, a connection that received nothing for ``keepalive_time``
sends a PING; if nothing at all arrives within ``keepalive_timeout`` the connection is
failed (every call on it ends with UNAVAILABLE) and the next call opens a new one. At most
one PING per ``keepalive_time`` of silence and none on an idle connection: gRPC servers,
Triton included, send GOAWAY ``too_many_pings`` to clients that ping more often without
data (grpc doc/keepalive.md; Triton's --grpc-http2-max-ping-strikes). TCP keepalive covers
idle connections (a peer host that vanished).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote

from hpack import Decoder, Encoder, HPACKError, NeverIndexedHeaderTuple


class Status(enum.IntEnum):
    """gRPC status codes (grpc/include/grpcpp/support/status_code_enum.h, doc/statuscodes.md):
    the one status type of the engine connection, used by the client and the proxy."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, code: int) -> Status:
        """A code from the wire; values outside the table count as UNKNOWN (statuscodes.md)."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (RFC 9113 section 6).
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0, 1, 2, 3, 4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 5, 6, 7, 8, 9
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20
# Settings identifiers.
_S_HEADER_TABLE_SIZE, _S_ENABLE_PUSH, _S_MAX_CONCURRENT_STREAMS = 1, 2, 3
_S_INITIAL_WINDOW_SIZE, _S_MAX_FRAME_SIZE = 4, 5
# Error codes.
_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
_FRAME_SIZE_ERROR, _REFUSED_STREAM, _CANCEL = 0x6, 0x7, 0x8

_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
# Our receive windows are as large as HTTP/2 allows, so Triton never waits for us; we
# give credit back once this much has been received (a frame every 1 GiB, not per token).
_REPLENISH = 2**30
_LAST_STREAM_ID = 2**31 - 1
# Larger than any Triton response we read (and than grpc.aio's 64 MiB limit we had).
MAX_MESSAGE = 64 * 1024 * 1024

_FRAME_HEAD = struct.Struct(">BHBBI")  # 24-bit length as (high byte, low 16 bits)
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 PING liveness of a connection with calls open (seconds; see the module doc)."""

    time: float = 30.0  # silence before a PING
    timeout: float = 20.0  # wait for any frame after it (gRPC's default keepalive timeout)


DEFAULT_KEEPALIVE = Keepalive()


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


class GrpcCallError(Exception):
    """A call ended without success: gRPC status ``code`` and its message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = Status.of(code)
        self.message = message


class H2ProtocolError(Exception):
    """The server broke HTTP/2 or gRPC framing; the connection is unusable."""


class GrpcStream:
    """One call. Messages are buffered as they arrive; :meth:`read_batch` drains them.

    The receive side is fed by the connection's ``data_received``; nothing runs per message
    but the length-prefix split and one list append.
    """

    __slots__ = (
        "_conn",
        "_end_after_pending",
        "_partial",
        "_pending",
        "_waiter",
        "_want",
        "error",
        "id",
        "last_activity",
        "local_closed",
        "messages",
        "received",
        "remote_closed",
        "response_started",
        "send_window",
        "trailers",
    )

    def __init__(self, conn: H2Connection, stream_id: int, send_window: int) -> None:
        self._conn = conn
        self.id = stream_id
        self.send_window = send_window
        self._pending = b""  # request bytes waiting for flow-control credit
        self._end_after_pending = False
        # An incomplete gRPC message, and the length it needs before it can be parsed:
        # frames are appended (linear in the message size), parsed once complete.
        self._partial = bytearray()
        self._want = 0
        self.messages: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self.error: GrpcCallError | None = None
        self.response_started = False
        self.remote_closed = False
        self.local_closed = False
        self.received = 0  # bytes of DATA since credit was last given back
        self.trailers: dict[str, str] = {}
        self.last_activity = 0.0

    # -- receive side (called by the connection) ------------------------------------------

    def _feed(self, payload: bytes) -> None:
        partial = self._partial
        if partial:
            partial += payload
            if len(partial) < self._want:
                return
            buf = bytes(partial)
            partial.clear()
        else:
            buf = payload
        pos = 0
        n = len(buf)
        messages = self.messages
        while True:
            if n - pos < 5:
                self._want = 5
                break
            if buf[pos]:
                raise H2ProtocolError("compressed gRPC message (no compression was negotiated)")
            size = _U32.unpack_from(buf, pos + 1)[0]
            if size > MAX_MESSAGE:
                raise H2ProtocolError(f"gRPC message of {size} bytes exceeds {MAX_MESSAGE}")
            end = pos + 5 + size
            if end > n:
                self._want = end - pos
                break
            messages.append(buf[pos + 5 : end])
            pos = end
        if pos < n:
            partial += memoryview(buf)[pos:]
        if messages:
            self._wake()

    def _fail(self, error: GrpcCallError) -> None:
        if self.error is None and not self.remote_closed:
            self.error = error
        self.remote_closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- caller side ----------------------------------------------------------------------

    async def read_batch(self) -> list[bytes] | None:
        """Every message received so far (waiting for at least one); None after a clean end.

        Raises :class:`GrpcCallError` for a non-OK status, a reset or a lost connection,
        once the messages that arrived before it have been returned.
        """
        while not self.messages:
            if self.remote_closed:
                if self.error is not None:
                    raise self.error
                return None
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch = self.messages
        self.messages = []
        return batch

    def close_send(self) -> None:
        """End our half of the call (after the request, or after the last response)."""
        if self.local_closed:
            return
        if self._pending:
            self._end_after_pending = True
            return
        self.local_closed = True
        self._conn._write(_frame(_DATA, _END_STREAM, self.id))
        self._conn._maybe_forget(self)

    def cancel(self) -> None:
        """Reset the stream (CANCEL) unless it is over: the server cancels the request."""
        conn = self._conn
        if self.id not in conn.streams:
            return
        if not self.remote_closed:
            if self.error is None:
                self.error = GrpcCallError(Status.CANCELLED, "cancelled by the client")
            self.remote_closed = True
        self.local_closed = True
        self._pending = b""
        conn._reset(self.id, _CANCEL)
        self._wake()

    def fail(self, error: GrpcCallError) -> None:
        """Fail the call locally (e.g. a deadline) and reset it on the wire."""
        if self.error is None:
            self.error = error
        self.cancel()
        self._wake()


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying many gRPC calls."""

    def __init__(
        self,
        authority: str,
        loop: asyncio.AbstractEventLoop,
        keepalive: Keepalive | None = None,
    ) -> None:
        self.loop = loop
        self.authority = authority
        self.keepalive = keepalive
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, GrpcStream] = {}
        self.closed = False
        self.draining = False  # GOAWAY received (or ids exhausted): no new calls here
        self._next_id = 1
        self._buf = b""
        self._decoder = Decoder()
        self._header_cache: dict[str, bytes] = {}
        self._continuation: tuple[int, int, list[bytes]] | None = None  # (stream, flags, parts)
        self._peer_max_frame = 16384
        self._peer_initial_window = _DEFAULT_WINDOW
        self._peer_max_streams = _LAST_STREAM_ID
        self._send_window = _DEFAULT_WINDOW
        self._received = 0
        self._blocked: dict[int, GrpcStream] = {}  # streams with request bytes waiting
        self._write_paused = False  # the transport's buffer is full (pause_writing)
        self.last_received = loop.time()  # time of the last socket read
        self._busy_since = 0.0  # when calls were opened on an idle connection
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_sent_at: float | None = None
        self._pings = 0
        self.lost: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._tcp_keepalive(transport)
        settings = _SETTING.pack(_S_ENABLE_PUSH, 0) + _SETTING.pack(
            _S_INITIAL_WINDOW_SIZE, _MAX_WINDOW
        )
        self.transport.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, _U32.pack(_MAX_WINDOW - _DEFAULT_WINDOW))
        )

    def _tcp_keepalive(self, transport: asyncio.BaseTransport) -> None:
        # Idle connections get no PINGs; the kernel's keepalive notices a vanished host.
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        idle = int(max(1.0, self.keepalive.time)) if self.keepalive else 30
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    def pause_writing(self) -> None:
        # Request DATA waits (as for flow control) until the transport drains; the few
        # small control frames (acks, resets, window updates) are still written.
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flush_blocked()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._stop_pings()
        reason = f": {exc}" if exc else ""
        self._fail_all(GrpcCallError(Status.UNAVAILABLE, f"connection to the server lost{reason}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        now = self.loop.time()
        self.last_received = now
        streams = self.streams
        try:
            while n - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME_HEAD.unpack_from(buf, pos)
                size = hi << 16 | lo
                if size > 16384:
                    raise H2ProtocolError(f"frame of {size} bytes exceeds 16384")
                start = pos + 9
                end = start + size
                if end > n:
                    break
                pos = end
                sid &= _LAST_STREAM_ID
                if ftype == _DATA:
                    if self._continuation is not None:
                        raise H2ProtocolError("DATA frame inside a header block")
                    if sid == 0:
                        raise H2ProtocolError("DATA frame on stream 0")
                    if flags & _PADDED and (size == 0 or buf[start] >= size):
                        raise H2ProtocolError("DATA frame padding longer than the frame")
                    self._received += end - start
                    stream = streams.get(sid)
                    if stream is None:
                        continue  # a stream we reset: its bytes only count for the connection
                    stream.received += end - start  # flow control counts the padding too
                    if flags & _PADDED:
                        start, end = start + 1, end - buf[start]
                    stream.last_activity = now
                    if end > start:
                        stream._feed(buf[start:end])
                    if flags & _END_STREAM:
                        self._remote_end(stream, GrpcCallError(Status.INTERNAL, "no gRPC status"))
                    elif stream.received > _REPLENISH:
                        self._write(_frame(_WINDOW_UPDATE, 0, sid, _U32.pack(stream.received)))
                        stream.received = 0
                elif ftype in (_HEADERS, _CONTINUATION):
                    self._on_header_frame(ftype, flags, sid, buf[start:end], now)
                elif self._continuation is not None:
                    raise H2ProtocolError("header block interrupted by another frame")
                elif ftype == _WINDOW_UPDATE:
                    if size != 4:
                        raise H2ProtocolError("WINDOW_UPDATE frame of bad length")
                    self._on_window_update(sid, _U32.unpack_from(buf, start)[0] & _MAX_WINDOW)
                elif ftype == _SETTINGS:
                    if sid:
                        raise H2ProtocolError("SETTINGS frame on a stream")
                    if not flags & _ACK:
                        self._on_settings(buf[start:end])
                    elif size:
                        raise H2ProtocolError("SETTINGS acknowledgement with a payload")
                elif ftype == _PING:
                    if size != 8 or sid:
                        raise H2ProtocolError("PING frame of bad length or on a stream")
                    if not flags & _ACK:
                        self._write(_frame(_PING, _ACK, 0, buf[start:end]))
                elif ftype == _RST_STREAM:
                    if size != 4 or not sid:
                        raise H2ProtocolError("RST_STREAM frame of bad length or on stream 0")
                    stream = streams.get(sid)
                    if stream is not None:
                        code = _U32.unpack_from(buf, start)[0]
                        stream.local_closed = True
                        self._remote_end(stream, _reset_error(code))
                elif ftype == _GOAWAY:
                    if size < 8 or sid:
                        raise H2ProtocolError("GOAWAY frame of bad length or on a stream")
                    last_sid, code = struct.unpack_from(">II", buf, start)
                    self._on_goaway(last_sid & _LAST_STREAM_ID, code)
                elif ftype == _PUSH_PROMISE:
                    raise H2ProtocolError("server push although it was disabled")
                # PRIORITY and unknown frame types are ignored (RFC 9113 section 5.5).
        except (H2ProtocolError, HPACKError, struct.error) as exc:
            self._abort(f"HTTP/2 protocol error from the server: {exc}")
            return
        self._buf = buf[pos:] if pos < n else b""
        if self._received > _REPLENISH:
            self._write(_frame(_WINDOW_UPDATE, 0, 0, _U32.pack(self._received)))
            self._received = 0

    # -- frames ---------------------------------------------------------------------------

    def _on_header_frame(
        self, ftype: int, flags: int, sid: int, payload: bytes, now: float
    ) -> None:
        if ftype == _CONTINUATION:
            if self._continuation is None or self._continuation[0] != sid:
                raise H2ProtocolError("unexpected CONTINUATION frame")
            self._continuation[2].append(payload)
            if not flags & _END_HEADERS:
                return
            sid, flags, parts = self._continuation
            self._continuation = None
            block = b"".join(parts)
        else:
            if self._continuation is not None:
                raise H2ProtocolError("header block interrupted by another frame")
            offset, end = 0, len(payload)
            pad = 0
            if flags & _PADDED:
                if not payload:
                    raise H2ProtocolError("HEADERS frame padding longer than the frame")
                offset, pad = 1, payload[0]
            if flags & _PRIORITY_FLAG:
                offset += 5
            if offset + pad > end:
                raise H2ProtocolError("HEADERS frame padding longer than the frame")
            block = payload[offset : end - pad]
            if not flags & _END_HEADERS:
                self._continuation = (sid, flags, [block])
                return
        # Decode every block, even for streams we forgot: HPACK state is per connection.
        headers = [(_text(k), _text(v)) for k, v in self._decoder.decode(block)]
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.last_activity = now
        if not stream.response_started:
            stream.response_started = True
            status = next((v for k, v in headers if k == ":status"), "")
            if status != "200":
                stream.local_closed = True
                self._remote_end(
                    stream, GrpcCallError(_http_status_to_grpc(status), f"HTTP status {status}")
                )
                self._reset(sid, _CANCEL)
                return
        if flags & _END_STREAM:
            fields = {k: v for k, v in headers if not k.startswith(":")}
            stream.trailers = fields
            code_text = fields.get("grpc-status")
            if code_text is None or not code_text.isdigit():
                error: GrpcCallError | None = GrpcCallError(
                    Status.UNKNOWN, "response without grpc-status"
                )
            elif int(code_text) == Status.OK:
                error = None
            else:
                error = GrpcCallError(int(code_text), unquote(fields.get("grpc-message", "")))
            self._remote_end(stream, error)

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise H2ProtocolError("SETTINGS frame of bad length")
        for off in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, off)
            if key == _S_INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise H2ProtocolError("initial window size too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == _S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise H2ProtocolError("max frame size out of range")
                self._peer_max_frame = value
            elif key == _S_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == _S_HEADER_TABLE_SIZE:
                # The size we must not exceed when *we* index; our encoder never indexes.
                pass
        self._write(_frame(_SETTINGS, _ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, sid: int, increment: int) -> None:
        if increment == 0:
            # A stream error by RFC 9113 6.9, which section 5.4.1 lets us treat as a
            # connection error, as the h2 package does.
            raise H2ProtocolError("WINDOW_UPDATE with an increment of 0")
        if sid == 0:
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise H2ProtocolError("WINDOW_UPDATE beyond the largest window (2^31-1)")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                return
            stream.send_window += increment
            if stream.send_window > _MAX_WINDOW:
                stream.local_closed = True
                self._remote_end(
                    stream,
                    GrpcCallError(Status.INTERNAL, "the server overflowed the stream's window"),
                )
                self._reset(sid, _FLOW_CONTROL_ERROR)
                return
        self._flush_blocked()

    def _on_goaway(self, last_sid: int, code: int) -> None:
        self.draining = True
        refused = GrpcCallError(
            Status.UNAVAILABLE, f"the server is going away (HTTP/2 GOAWAY, error code {code})"
        )
        for stream in [s for s in self.streams.values() if s.id > last_sid]:
            stream.local_closed = True
            self._remote_end(stream, refused)
        self._close_if_idle()

    # -- liveness -------------------------------------------------------------------------

    def _start_pings(self) -> None:
        if self.keepalive is not None and self._ping_timer is None and not self.closed:
            self._busy_since = self.loop.time()
            self._ping_timer = self.loop.call_later(self.keepalive.time, self._check_alive)

    def _stop_pings(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def _check_alive(self) -> None:
        keepalive = self.keepalive
        self._ping_timer = None
        if keepalive is None or self.closed:
            return
        now = self.loop.time()
        if self._ping_sent_at is not None:
            if self.last_received <= self._ping_sent_at:
                self._fail_unresponsive(
                    f"no answer from the server to an HTTP/2 PING within {keepalive.timeout:g} s"
                )
                return
            self._ping_sent_at = None  # anything received proves the peer is alive
        if not self.streams:
            return  # idle: no PINGs without calls (servers count them as abuse)
        idle = now - max(self.last_received, self._busy_since)
        if idle < keepalive.time:
            self._ping_timer = self.loop.call_later(keepalive.time - idle, self._check_alive)
            return
        self._pings += 1
        self._write(_frame(_PING, 0, 0, self._pings.to_bytes(8, "big")))
        self._ping_sent_at = now
        self._ping_timer = self.loop.call_later(keepalive.timeout, self._check_alive)

    def _fail_unresponsive(self, reason: str) -> None:
        # The peer reads nothing (frozen, or the path is gone): abort() rather than close(),
        # which would wait to flush what the peer will never read.
        self.closed = self.draining = True
        self._fail_all(GrpcCallError(Status.UNAVAILABLE, reason))
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        if not self.lost.done():
            self.lost.set_result(None)

    def _remote_end(self, stream: GrpcStream, error: GrpcCallError | None) -> None:
        if stream._partial and error is None:
            error = GrpcCallError(Status.INTERNAL, "the stream ended inside a gRPC message")
        if error is not None:
            stream._fail(error)
        else:
            stream.remote_closed = True
            stream._wake()
        self._maybe_forget(stream)

    # -- sending --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _reset(self, sid: int, code: int) -> None:
        self.streams.pop(sid, None)
        self._blocked.pop(sid, None)
        self._write(_frame(_RST_STREAM, 0, sid, _U32.pack(code)))
        self._close_if_idle()

    def _maybe_forget(self, stream: GrpcStream) -> None:
        if stream.remote_closed and stream.local_closed:
            self.streams.pop(stream.id, None)
            self._blocked.pop(stream.id, None)
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.draining and not self.streams and self.transport is not None:
            self.transport.close()

    def can_start(self) -> bool:
        return (
            not self.closed
            and not self.draining
            and self.transport is not None
            and len(self.streams) < self._peer_max_streams
        )

    def _header_block(self, path: str) -> bytes:
        block = self._header_cache.get(path)
        if block is None:
            # Never-indexed literals leave the server's HPACK table untouched, so one block
            # per method is valid for every call on this connection.
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", "trtllm-stack"),
            ]
            block = Encoder().encode(
                [NeverIndexedHeaderTuple(k, v) for k, v in headers], huffman=False
            )
            self._header_cache[path] = block
        return block

    def start_call(self, path: str, message: bytes, *, end_stream: bool) -> GrpcStream:
        """Open a stream, send the headers and one request message (with END_STREAM for a
        unary call, or left open for a bidirectional one)."""
        if not self.can_start():
            raise GrpcCallError(Status.UNAVAILABLE, "connection is not usable for new calls")
        block = self._header_block(path)
        if len(block) > self._peer_max_frame:
            raise GrpcCallError(Status.INTERNAL, "request headers larger than one frame")
        sid = self._next_id
        self._next_id += 2
        if self._next_id > _LAST_STREAM_ID:
            self.draining = True
        stream = GrpcStream(self, sid, self._peer_initial_window)
        stream.last_activity = self.loop.time()
        if not self.streams:
            self._start_pings()
        self.streams[sid] = stream
        out = [_frame(_HEADERS, _END_HEADERS, sid, block)]
        stream._pending = _U32.pack(len(message)).rjust(5, b"\0") + message
        stream._end_after_pending = end_stream
        self._send_pending(stream, out)
        self._write(b"".join(out))
        return stream

    def _send_pending(self, stream: GrpcStream, out: list[bytes]) -> None:
        data = stream._pending
        while data:
            room = min(self._send_window, stream.send_window, self._peer_max_frame)
            if room <= 0 or self._write_paused:
                self._blocked[stream.id] = stream
                break
            chunk, data = data[:room], data[room:]
            self._send_window -= len(chunk)
            stream.send_window -= len(chunk)
            flags = _END_STREAM if not data and stream._end_after_pending else 0
            out.append(_frame(_DATA, flags, stream.id, chunk))
        stream._pending = data
        if not data:
            self._blocked.pop(stream.id, None)
            if stream._end_after_pending and not stream.local_closed:
                stream.local_closed = True
                self._maybe_forget(stream)

    def _flush_blocked(self) -> None:
        if not self._blocked or self._write_paused:
            return
        out: list[bytes] = []
        for stream in list(self._blocked.values()):
            self._send_pending(stream, out)
        if out:
            self._write(b"".join(out))

    # -- failure --------------------------------------------------------------------------

    def _fail_all(self, error: GrpcCallError) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        for stream in streams:
            stream.local_closed = True
            stream._fail(error)

    def _abort(self, reason: str) -> None:
        self.draining = True
        self._write(_frame(_GOAWAY, 0, 0, struct.pack(">II", 0, _PROTOCOL_ERROR)))
        self._fail_all(GrpcCallError(Status.UNAVAILABLE, reason))
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.draining = True
        self._stop_pings()
        self._fail_all(GrpcCallError(Status.UNAVAILABLE, "the client closed the connection"))
        if self.transport is not None:
            self._write(_frame(_GOAWAY, 0, 0, struct.pack(">II", 0, _NO_ERROR)))
            self.transport.close()


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def _reset_error(code: int) -> GrpcCallError:
    if code == _REFUSED_STREAM:
        return GrpcCallError(Status.UNAVAILABLE, "the server refused the stream")
    if code == _CANCEL:
        return GrpcCallError(Status.CANCELLED, "the server cancelled the stream")
    return GrpcCallError(Status.INTERNAL, f"the server reset the stream (HTTP/2 error code {code})")


_HTTP_TO_GRPC = {
    "400": Status.INTERNAL,
    "401": Status.UNAUTHENTICATED,
    "403": Status.PERMISSION_DENIED,
    "404": Status.UNIMPLEMENTED,
    "429": Status.UNAVAILABLE,
    "502": Status.UNAVAILABLE,
    "503": Status.UNAVAILABLE,
    "504": Status.UNAVAILABLE,
}


def _http_status_to_grpc(status: str) -> Status:
    # gRPC's HTTP-to-status mapping (doc/http-grpc-status-mapping.md).
    return _HTTP_TO_GRPC.get(status, Status.UNKNOWN)


class GrpcChannel:
    """Calls to one ``host:port``, on as few HTTP/2 connections as the server allows.

    Connects lazily (first call) and again after the connection was lost, so the caller
    sees UNAVAILABLE while the server is down and success once it is back, with no backoff
    state to wait out.
    """

    def __init__(
        self,
        target: str,
        *,
        connect_timeout: float = 5.0,
        keepalive: Keepalive | None = DEFAULT_KEEPALIVE,
    ) -> None:
        self.host, self.port = split_target(target)
        self.authority = target
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._conns: list[H2Connection] = []
        self._connecting: asyncio.Task[H2Connection] | None = None
        self._closed = False

    async def _connection(self) -> H2Connection:
        for conn in self._conns:
            if conn.can_start():
                return conn
        self._conns = [c for c in self._conns if not c.closed]
        if self._closed:
            raise GrpcCallError(Status.UNAVAILABLE, "the channel is closed")
        # One connect at a time: a burst of first calls shares it.
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        task = self._connecting
        try:
            conn = await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None
        if not conn.can_start():
            # Full already (a burst larger than the server's stream limit) or lost at once.
            if conn.closed:
                raise GrpcCallError(
                    Status.UNAVAILABLE, "the connection closed right after it opened"
                )
            return await self._connection()
        return conn

    async def _connect(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: H2Connection(self.authority, loop, self.keepalive),
                    self.host,
                    self.port,
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise GrpcCallError(
                Status.UNAVAILABLE,
                f"cannot connect to {self.host}:{self.port}: {str(exc) or 'timeout'}",
            ) from None
        self._conns.append(conn)
        return conn

    async def open_stream(self, path: str, message: bytes) -> GrpcStream:
        """A bidirectional call with its first request message sent; our half stays open."""
        conn = await self._connection()
        return conn.start_call(path, message, end_stream=False)

    async def unary(self, path: str, message: bytes, timeout: float) -> bytes:
        """One request, one response message (raises GrpcCallError, DEADLINE_EXCEEDED)."""
        conn = await self._connection()
        stream = conn.start_call(path, message, end_stream=True)
        got: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while (batch := await stream.read_batch()) is not None:
                    got.extend(batch)
        except TimeoutError:
            raise GrpcCallError(
                Status.DEADLINE_EXCEEDED, f"no answer within {timeout:g} s"
            ) from None
        finally:
            stream.cancel()
        if len(got) != 1:
            raise GrpcCallError(Status.INTERNAL, f"expected one response message, got {len(got)}")
        return got[0]

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(conn.lost), 1.0)


def split_target(target: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``grpc://host:port`` -> (host, port)."""
    text = target.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port for the gRPC address, got {target!r}")
    return host, int(port)
