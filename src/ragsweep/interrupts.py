"""SIGTERM and Ctrl-C stop a run, and are never lost on the way.

Python runs a signal handler between two bytecodes of the main thread, wherever that is. When it
is inside a `__del__` or a weakref callback (Dask's, during garbage collection), the exception the
handler raises is printed as "Exception ignored" and dropped, and the run would go on to its end.
So the handler also records the signal, and the run's loops call `raise_if_signalled()` between
units of work: a dropped exception is raised again there.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from .outcome import Interrupted

_received: int | None = None  # the signal caught inside `stop_on_signals`, until the block ends


def _on_signal(signum, frame) -> None:
    global _received
    _received = signum
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside the block SIGTERM and Ctrl-C raise `Interrupted` (exit 143 or 130), and are recorded. A SIGINT the shell
    set to be ignored (a background job) stays ignored. Main thread only."""
    global _received
    _received = None
    caught = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else [])
    previous = {signum: signal.signal(signum, _on_signal) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received = None


def raise_if_signalled() -> None:
    """Raise the stop for a signal caught in this block, in case its first raise was dropped. Cheap: call it often."""
    if _received is not None:
        raise Interrupted(_received)
