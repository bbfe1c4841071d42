"""Ctrl-C that waits for the end of an iteration, for training loops that checkpoint."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class DeferredInterrupt:
    """Ctrl-C during a training loop finishes the current iteration first, so that the
    checkpoint written on Ctrl-C holds a state between iterations (one a resume continues
    exactly); a second Ctrl-C stops at once. Only where Python's own SIGINT handler is active
    in the main thread; anywhere else nothing changes. The loop polls ``requested`` and calls
    ``restore`` when it ends."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this iteration (Ctrl-C again to stop now)", file=sys.stderr)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
