"""The proxy test helpers (start_proxy) for the engine integration tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "proxy"))
