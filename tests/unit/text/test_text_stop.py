"""StopMatcher: stop strings across chunk boundaries, never emitted."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from trtllm_stack.text.stop import StopMatcher


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut at the stop that completes first (longest if several end at the same place)."""
    best: tuple[int, int] | None = None
    for stop in stops:
        i = text.find(stop) if stop else -1
        if i != -1 and (best is None or (i + len(stop), i) < best):
            best = (i + len(stop), i)
    return (text, False) if best is None else (text[: best[1]], True)


def stream(text: str, stops: list[str], cuts: list[int]) -> tuple[list[str], bool]:
    matcher = StopMatcher(stops)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    out: list[str] = []
    stopped = False
    for a, b in itertools.pairwise(bounds):
        piece, stopped = matcher.push(text[a:b])
        out.append(piece)
    if not stopped:
        out.append(matcher.flush())
    return out, stopped


def test_stop_split_across_pushes_is_not_emitted() -> None:
    matcher = StopMatcher(["<|user|>", "\n\n"])
    assert matcher.push("Hello <|us") == ("Hello ", False)
    assert matcher.push("er|> more") == ("", True)
    assert matcher.push("ignored") == ("", True)
    assert matcher.flush() == ""


def test_false_alarm_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("a ST") == ("a ", False)
    assert matcher.push("OMP") == ("STOMP", False)
    assert matcher.push("x STO") == ("x ", False)
    assert matcher.flush() == "STO"


def test_no_stops_passes_through() -> None:
    matcher = StopMatcher(["", ""])
    assert matcher.push("anything") == ("anything", False)
    assert matcher.flush() == ""


def test_first_completed_stop_wins() -> None:
    # "c" completes before the longer "abcd" could; a token-by-token engine stops there.
    assert stream("xabcd", ["abcd", "c"], [1, 2, 3, 4])[0] == ["x", "", "", "ab", ""]
    assert "".join(stream("xabcd", ["abcd", "c"], [])[0]) == "xab"


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab\nc", max_size=25),
    stops=st.lists(st.text(alphabet="ab\nc", max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 25), max_size=25),
)
def test_any_chunking_equals_reference(text: str, stops: list[str], cuts: list[int]) -> None:
    pieces, stopped = stream(text, stops, cuts)
    assert ("".join(pieces), stopped) == reference(text, stops)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab", max_size=40),
    stops=st.lists(st.text(alphabet="ab", min_size=1, max_size=12), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=40),
)
def test_self_overlapping_stops_equal_reference(text: str, stops: list[str], cuts) -> None:
    # Stops like "abab"/"aab" exercise the failure function (partial matches that restart).
    pieces, stopped = stream(text, stops, cuts)
    assert ("".join(pieces), stopped) == reference(text, stops)


def test_memory_is_linear_in_stop_length() -> None:
    # The old prefix set held L^2/2 characters: 20 KB cost 182 MB. Now one int per char.
    import tracemalloc

    sizes = {}
    for length in (10_000, 40_000):
        tracemalloc.start()
        matcher = StopMatcher(["x" * length, "ab" * (length // 2)])
        for _ in range(200):
            matcher.push("x" * 50)
        sizes[length] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert sizes[40_000] < 6 * sizes[10_000]  # linear (quadratic would be 16x)
    assert sizes[40_000] < 20 * 40_000 * 8  # a few words per character, not L^2
