"""Fixtures of the reliability tests: the proxy helpers of tests/integration/proxy (a real
uvicorn proxy in a thread, event-log readers) plus SSE and loop-inspection helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "proxy"))

from proxy_helpers import proxy_factory

__all__ = ["proxy_factory"]
