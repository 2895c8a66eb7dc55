"""grpc_wire against the ``h2`` package (a reference HTTP/2 implementation): the same server
frame sequences, cut into socket reads at random places, go to both clients, and the
outcomes must agree: connection failed or not, and for the open stream its response
headers, DATA bytes, trailers status, and whether it ended, was reset or failed.

h2 is the reference on what a client must reject (RFC 9113 connection and stream errors);
grpc_wire only reports outcomes at this granularity, which is all a caller sees. One known
difference is left out of the cases: after a GOAWAY, h2 rejects every further frame, while
RFC 9113 section 6.8 (and grpc_wire) let streams up to its last stream id finish.
"""

from __future__ import annotations

import asyncio
import random
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hpack import Encoder, NeverIndexedHeaderTuple

from trtllm_stack.triton.grpc_wire import GrpcCallError, H2Connection, Status

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def msg(body: bytes) -> bytes:
    return struct.pack(">BI", 0, len(body)) + body


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def block(*fields: tuple[str, str]) -> bytes:
    # Never-indexed literals: every block decodes alone, whatever came before.
    return Encoder().encode([NeverIndexedHeaderTuple(k, v) for k, v in fields], huffman=False)


RESP = block((":status", "200"), ("content-type", "application/grpc"))
OK_TRAILERS = block(("grpc-status", "0"))
BAD_TRAILERS = block(("grpc-status", "13"), ("grpc-message", "boom"))
NOT_200 = block((":status", "503"))


def headers(block: bytes = RESP, flags: int = END_HEADERS, sid: int = 1) -> bytes:
    return frame(HEADERS, flags, sid, block)


def trailers(block: bytes = OK_TRAILERS) -> bytes:
    return frame(HEADERS, END_HEADERS | END_STREAM, 1, block)


def data(body: bytes, flags: int = 0, sid: int = 1) -> bytes:
    return frame(DATA, flags, sid, body)


BODY = msg(b"hello") + msg(b"x" * 300) + msg(b"")

# name -> server bytes after its SETTINGS; stream 1 is open (request sent, our half open).
CASES: dict[str, bytes] = {
    # -- valid ----------------------------------------------------------------------------
    "response and trailers": headers() + data(BODY) + trailers(),
    "error status in trailers": headers() + data(msg(b"a")) + trailers(BAD_TRAILERS),
    "messages split over frames": headers()
    + data(BODY[:3])
    + data(BODY[3:100])
    + data(BODY[100:])
    + trailers(),
    "padded data": headers() + data(bytes([4]) + BODY + b"\0" * 4, PADDED) + trailers(),
    "padded data, all padding": headers() + data(bytes([2]) + b"\0\0", PADDED) + trailers(),
    "padded headers with priority": frame(
        HEADERS,
        END_HEADERS | PADDED | PRIORITY_FLAG,
        1,
        bytes([3]) + u32(0) + b"\x10" + RESP + b"\0\0\0",
    )
    + data(BODY)
    + trailers(),
    "continuation": headers(RESP[:2], 0)
    + frame(CONTINUATION, 0, 1, RESP[2:5])
    + frame(CONTINUATION, END_HEADERS, 1, RESP[5:])
    + data(BODY)
    + trailers(),
    "ping and window updates between data": headers()
    + frame(PING, 0, 0, b"12345678")
    + data(BODY[:50])
    + frame(WINDOW_UPDATE, 0, 0, u32(1000))
    + frame(WINDOW_UPDATE, 0, 1, u32(1000))
    + data(BODY[50:])
    + trailers(),
    "trailers only": frame(HEADERS, END_HEADERS | END_STREAM, 1, RESP + OK_TRAILERS),
    "reset by the server": headers() + data(msg(b"a")) + frame(RST_STREAM, 0, 1, u32(0x8)),
    "non-200 status": headers(NOT_200, END_HEADERS | END_STREAM),
    "unknown frame type is ignored": headers()
    + frame(0x42, 0, 1, b"xyz")
    + data(BODY)
    + trailers(),
    "priority frame is ignored": headers() + frame(PRIORITY, 0, 1, u32(0) + b"\x10") + trailers(),
    "goaway below our stream": headers() + frame(GOAWAY, 0, 0, u32(0) + u32(0)),
    "goaway after the trailers": headers() + trailers() + frame(GOAWAY, 0, 0, u32(1) + u32(0)),
    "settings change mid-stream": headers()
    + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 100))
    + data(BODY)
    + trailers(),
    # -- invalid: connection errors -------------------------------------------------------
    "data inside an open header block": headers(RESP[:2], 0) + data(msg(b"a")),
    "ping inside an open header block": headers(RESP[:2], 0) + frame(PING, 0, 0, b"12345678"),
    "continuation of another stream": headers(RESP[:2], 0)
    + frame(CONTINUATION, END_HEADERS, 3, RESP[2:]),
    "continuation without headers": frame(CONTINUATION, END_HEADERS, 1, RESP),
    "data padding longer than the frame": headers() + data(bytes([10]) + b"abc", PADDED),
    "data padding equal to the frame": headers() + data(bytes([4]) + b"abc", PADDED),
    "empty padded data": headers() + data(b"", PADDED),
    "headers padding longer than the frame": frame(
        HEADERS, END_HEADERS | PADDED, 1, bytes([200]) + RESP
    ),
    "window update of 0 on the connection": frame(WINDOW_UPDATE, 0, 0, u32(0)),
    "window update of 0 on the stream": headers() + frame(WINDOW_UPDATE, 0, 1, u32(0)),
    "connection window past 2^31-1": frame(WINDOW_UPDATE, 0, 0, u32(2**31 - 1)),
    "window update of bad length": frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"),
    "ping of bad length": frame(PING, 0, 0, b"1234"),
    "rst_stream of bad length": headers() + frame(RST_STREAM, 0, 1, b"\0\0"),
    "settings of bad length": frame(SETTINGS, 0, 0, b"\0\4\0"),
    "settings ack with payload": frame(SETTINGS, ACK, 0, struct.pack(">HI", 4, 1)),
    "settings on a stream": frame(SETTINGS, 0, 1, b""),
    "data on stream 0": frame(DATA, 0, 0, b"abc"),
    "initial window past 2^31-1": frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31)),
    "max frame size too small": frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 100)),
    "push promise": headers() + frame(PUSH_PROMISE, END_HEADERS, 1, u32(2) + RESP),
    # -- invalid: stream errors -----------------------------------------------------------
    "stream window past 2^31-1": headers() + frame(WINDOW_UPDATE, 0, 1, u32(2**31 - 1)),
}


@dataclass
class Outcome:
    connection_failed: bool = False
    status: str | None = None  # :status of the response headers
    body: bytes = b""
    grpc_status: int | None = None  # from trailers
    end: str = "open"  # open | ended | reset | failed
    extras: list[str] = field(default_factory=list)


def via_h2(wire: bytes, cuts: list[int]) -> Outcome:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(":method", "POST"), (":scheme", "http"), (":path", "/s/m"), (":authority", "t")],
    )
    conn.send_data(1, msg(b"request"))
    conn.data_to_send()
    out = Outcome()
    try:
        for part in _split(frame(SETTINGS, 0, 0) + wire, cuts):
            for ev in conn.receive_data(part):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 1:
                    fields = dict(ev.headers)
                    out.status = fields.get(":status")
                    if "grpc-status" in fields:  # a trailers-only response
                        out.grpc_status = int(fields["grpc-status"])
                    if out.status != "200":
                        out.end = "failed"
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == 1:
                    out.body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == 1:
                    out.grpc_status = int(dict(ev.headers)["grpc-status"])
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 1:
                    if out.end == "open":
                        out.end = "ended"
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == 1:
                    if out.end == "open":
                        # Reset by the server, or by h2 itself for a stream error.
                        out.end = "reset" if ev.remote_reset else "failed"
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    # GOAWAY with last stream >= 1: our stream may finish.
                    if ev.last_stream_id is not None and ev.last_stream_id < 1:
                        out.end = "failed"
                elif isinstance(ev, h2.events.PushedStreamReceived):
                    raise h2.exceptions.ProtocolError("push")
    except h2.exceptions.ProtocolError:
        out.connection_failed = True
        if out.end == "open":
            out.end = "failed"
    if out.end == "ended" and out.grpc_status is None and out.status == "200":
        # A stream that ended on DATA without trailers: gRPC has no status for it.
        out.end = "failed"
    if out.grpc_status not in (None, 0) and out.end == "ended":
        out.end = "failed"
    return out


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def via_grpc_wire(wire: bytes, cuts: list[int]) -> Outcome:
    loop = asyncio.get_running_loop()
    conn = H2Connection("t", loop)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    stream = conn.start_call("/s/m", b"request", end_stream=False)
    for part in _split(frame(SETTINGS, 0, 0) + wire, cuts):
        conn.data_received(part)
    out = Outcome()
    # Failed = we sent GOAWAY with an error code (a server GOAWAY only drains the connection).
    sent = b"".join(transport.written)
    out.connection_failed = any(
        sent[i + 3] == GOAWAY and struct.unpack_from(">I", sent, i + 13)[0] != 0
        for i in _frame_offsets(sent)
    )
    if stream.response_started:
        out.status = "200"
    for m in stream.messages:
        out.body += msg(m)
    if stream.remote_closed:
        err = stream.error
        if err is None:
            out.end, out.grpc_status = "ended", 0
        elif err.code == Status.CANCELLED and "server cancelled" in err.message:
            out.end = "reset"
        else:
            out.end = "failed"
    status = stream.trailers.get("grpc-status")
    if status is not None:
        out.grpc_status = int(status)
    if isinstance(stream.error, GrpcCallError) and stream.error.message.startswith("HTTP status"):
        out.status = stream.error.message.split()[-1]
    return out


def _frame_offsets(data: bytes) -> list[int]:
    pos = data.find(b"\r\n\r\nSM\r\n\r\n") + 10 if data.startswith(b"PRI") else 0
    offsets = []
    while pos + 9 <= len(data):
        offsets.append(pos)
        pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
    return offsets


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _comparable(o: Outcome) -> tuple[object, ...]:
    # h2 reports every connection error as one; grpc_wire fails the stream with it.
    if o.connection_failed:
        return ("connection failed",)
    # DATA bytes are what a caller reads only when the stream did not fail.
    return (o.status, o.body if o.end != "failed" else None, o.grpc_status, o.end)


@pytest.mark.parametrize("name", list(CASES))
async def test_grpc_wire_agrees_with_h2(name: str) -> None:
    wire = CASES[name]
    rng = random.Random(name)
    total = len(wire) + 9
    splits = [[], list(range(1, total))]  # one read; one byte per read
    splits += [sorted(rng.sample(range(1, total), min(total - 1, 3))) for _ in range(6)]
    for cuts in splits:
        ref, ours = via_h2(wire, cuts), await via_grpc_wire(wire, cuts)
        assert _comparable(ours) == _comparable(ref), (name, cuts, ours, ref)


def test_the_cases_cover_both_outcomes() -> None:
    outcomes = {_comparable(via_h2(w, []))[0] == "connection failed" for w in CASES.values()}
    assert outcomes == {True, False}
