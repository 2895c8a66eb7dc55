"""Stop strings matched on streamed text, across chunk boundaries, never emitted.

Per push the work is O(len(new text) * number of stops): the buffer searched is the new
text plus the held-back tail, which is shorter than the longest stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Hold back text that might be the start of a stop string; cut at the first stop.

    ``push`` returns ``(text safe to emit, stopped)``. Once stopped, the text before the
    stop string has been returned and every later push returns ``("", True)``.
    """

    __slots__ = ("_firsts", "_held", "_max_hold", "_prefixes", "_stopped", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._prefixes = frozenset(s[:k] for s in self._stops for k in range(1, len(s)))
        self._firsts = frozenset(s[0] for s in self._stops)
        self._max_hold = max((len(s) - 1 for s in self._stops), default=0)
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def push(self, text: str) -> tuple[str, bool]:
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        buf = self._held + text if self._held else text
        # The stop that completes first wins (the longest one if several end together),
        # which is what a token-by-token check sees, whatever the chunking.
        cut = -1
        cut_end = -1
        for stop in self._stops:
            i = buf.find(stop)
            if i != -1:
                end = i + len(stop)
                if cut == -1 or end < cut_end or (end == cut_end and i < cut):
                    cut, cut_end = i, end
        if cut != -1:
            self._held = ""
            self._stopped = True
            return buf[:cut], True
        hold = self._hold_length(buf)
        if hold:
            self._held = buf[-hold:]
            return buf[:-hold], False
        self._held = ""
        return buf, False

    def _hold_length(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop."""
        start = max(0, len(buf) - self._max_hold)
        tail = buf[start:]
        firsts = self._firsts
        # Longest candidate first; only positions holding a stop's first character.
        for j, ch in enumerate(tail):
            if ch in firsts and tail[j:] in self._prefixes:
                return len(tail) - j
        return 0

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self._stopped else held
