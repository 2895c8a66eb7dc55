"""SIGTERM and SIGHUP end a command the way Ctrl-C does: through its ``finally`` blocks.

Python's default for both is to die on the spot, skipping every cleanup (the demo then left
tritonserver and its stubs running). uvicorn handles SIGTERM itself while it serves, and
re-raises it once it has shut down (uvicorn/server.py ``capture_signals``): the handler
installed here turns that into ``StopRequested`` too.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopRequested(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP (BaseException: no ``except Exception``
    swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signum)


def _hup_as_term(_signum: int, _frame: FrameType | None) -> None:
    # Whoever handles SIGTERM right now (uvicorn while it serves: a graceful shutdown;
    # _raise_stop otherwise) handles SIGHUP the same way. Raising inside uvicorn's event
    # loop instead would skip its shutdown.
    signal.raise_signal(signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise StopRequested (main thread only)."""
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, _hup_as_term),
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
