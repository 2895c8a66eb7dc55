"""The proxy helpers of tests/integration/proxy (a real uvicorn proxy in a thread), for the
replica launch test that serves its replicas through one proxy."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "proxy"))

from proxy_helpers import proxy_factory

__all__ = ["proxy_factory"]
