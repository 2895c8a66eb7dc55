"""Helpers for the proxy integration tests (a module name unique in the repository)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(
    path: Path,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
    count: int = 1,
) -> dict[str, Any]:
    """The ``count``-th event matching ``predicate`` (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matching = [ev for ev in read_events(path) if predicate(ev)]
        if len(matching) >= count:
            return matching[count - 1]
        time.sleep(0.05)
    raise AssertionError(
        f"fewer than {count} matching events in {path} after {timeout} s"
    )


def sse_events(response: httpx.Response) -> list[str]:
    """The data fields of an SSE response, in order (raw strings)."""
    return [
        block[len("data: ") :]
        for block in response.text.split("\n\n")
        if block.startswith("data: ")
    ]
