"""Incremental Server-Sent Events parser (the WHATWG event-stream format), bytes in, events out.

Only what an OpenAI stream needs: ``data`` (multi-line joined with newlines), ``event``;
comments and ``id``/``retry`` are skipped. Network chunks may split anywhere, including
between the ``\\r`` and ``\\n`` of a line ending.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEParser:
    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # a lone trailing CR may be the first half of CRLF: decide on the next chunk
            hold = buf.endswith(b"\r")
            if hold:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                buf += b"\r"
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        events: list[SSEEvent] = []
        for raw in buf[:end].split(b"\n"):
            if not raw:
                if self._data:
                    events.append(SSEEvent("\n".join(self._data), self._event or "message"))
                self._data = []
                self._event = ""
                continue
            line = raw.decode("utf-8", errors="replace")
            name, sep, value = line.partition(":")
            if not name:
                continue  # comment line (": keep-alive")
            if sep and value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line is still dispatched
        (servers that drop the last blank line exist; the spec would discard it)."""
        events = self.feed(b"\n\n") if (self._buf.strip(b"\r") or self._data) else []
        self._buf = b""
        return events
