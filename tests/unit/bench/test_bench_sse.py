"""SSE framing: events survive any split of the byte stream."""

from __future__ import annotations

from trtllm_stack.bench.sse import SSEEvent, SSEParser

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a": 1}\n\n'
    b"event: error\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"data:no-space\rid: 3\r\r"
    b"retry: 100\n\n"
    b'data: {"emoji": "\xf0\x9f\x98\x80"}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("line one\nline two", "error"),
    SSEEvent("no-space"),
    SSEEvent('{"emoji": "\U0001f600"}'),
    SSEEvent("[DONE]"),
]


def _feed_all(chunks: list[bytes]) -> list[SSEEvent]:
    p = SSEParser()
    out: list[SSEEvent] = []
    for c in chunks:
        out.extend(p.feed(c))
    out.extend(p.close())
    return out


def test_whole_stream() -> None:
    assert _feed_all([STREAM]) == EXPECTED


def test_every_two_way_split() -> None:
    for i in range(len(STREAM) + 1):
        assert _feed_all([STREAM[:i], STREAM[i:]]) == EXPECTED, i


def test_byte_by_byte() -> None:
    assert _feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_final_event_without_blank_line_is_flushed_on_close() -> None:
    assert _feed_all([b"data: x\n\ndata: last"]) == [SSEEvent("x"), SSEEvent("last")]
    assert _feed_all([b"data: x\n"]) == [SSEEvent("x")]


def test_empty_data_line_gives_empty_event_only_with_data_field() -> None:
    assert _feed_all([b"event: ping\n\n"]) == []
    assert _feed_all([b"data:\n\n"]) == [SSEEvent("")]
