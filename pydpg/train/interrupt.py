"""Ctrl-C during training: the run stops between two steps, after a checkpoint of that step (the
state is whole there; a KeyboardInterrupt raised inside an update or an insert would not leave it
so), then raises KeyboardInterrupt. A second Ctrl-C interrupts at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Interrupt:
    """Whether Ctrl-C was pressed since the block began; the loop checks it between steps."""

    requested = False


@contextlib.contextmanager
def sigint_between_steps() -> Iterator[Interrupt]:
    """SIGINT sets ``requested`` inside the block (on the main thread; elsewhere signals cannot be
    handled, and the flag stays False); the previous handler comes back after."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if interrupt.requested:
            raise KeyboardInterrupt
        interrupt.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
