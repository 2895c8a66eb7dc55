"""Stop strings matched on streamed text, across chunk boundaries, never emitted.

Memory and time are linear: each stop string keeps its KMP failure function (one int per
character) and the length of its prefix that the output currently ends with; a push costs
O(len(text)) per stop string (amortized), whatever the stop strings hold. (The previous
set of every prefix of every stop cost L^2/2 characters: a 400 KB stop string took the
proxy to 22 GB.) Pushes whose text holds no stop's first character, with nothing held,
are a C-level membership test per stop.
"""

from __future__ import annotations

from collections.abc import Sequence


def _failure(stop: str) -> list[int]:
    """KMP failure function: ``fail[i]`` = length of the longest proper border of
    ``stop[: i + 1]``."""
    fail = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        ch = stop[i]
        while k and stop[k] != ch:
            k = fail[k - 1]
        if stop[k] == ch:
            k += 1
        fail[i] = k
    return fail


class StopMatcher:
    """Hold back text that might be the start of a stop string; cut at the first stop.

    ``push`` returns ``(text safe to emit, stopped)``. Once stopped, the text before the
    stop string has been returned and every later push returns ``("", True)``.
    """

    __slots__ = ("_fails", "_held", "_matched", "_stopped", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._fails = tuple(_failure(s) for s in self._stops)
        # Per stop: length of its longest prefix that the text seen so far ends with
        # (always < its length: a full match stops the matcher).
        self._matched = [0] * len(self._stops)
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
        held = self._held
        matched = self._matched
        # The stop that completes first wins (the longest one if several end together),
        # which is what a token-by-token check sees, whatever the chunking.
        best_end = -1
        best_len = 0
        for n, stop in enumerate(self._stops):
            k = matched[n]
            start = 0
            if k == 0:
                start = text.find(stop[0])
                if start == -1:
                    continue
            fail = self._fails[n]
            last = len(stop)
            for i in range(start, len(text)):
                ch = text[i]
                while k and stop[k] != ch:
                    k = fail[k - 1]
                if stop[k] == ch:
                    k += 1
                    if k == last:
                        if best_end == -1 or i < best_end or (i == best_end and last > best_len):
                            best_end, best_len = i, last
                        break
            matched[n] = k
        buf = held + text if held else text
        if best_end != -1:
            self._held = ""
            self._stopped = True
            return buf[: len(held) + best_end + 1 - best_len], True
        hold = max(matched)
        if hold:
            self._held = buf[-hold:]
            return buf[:-hold], False
        self._held = ""
        return buf, False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self._stopped else held
