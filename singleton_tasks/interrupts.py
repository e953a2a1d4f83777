"""Stop signals that arrive in the middle of work that must not be cut in half.

Python runs signal handlers in the main thread, between any two bytecodes. A handler that
raises (Celery beat's SIGTERM handler closes the scheduler, then raises SystemExit) would
end a publish half-way, after its slot was reserved and logged as sent.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends, then act on each one caught.

    Only in the main thread (the one Python runs handlers in) and only over handlers
    Python can restore; elsewhere it holds nothing.
    """
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or any(
            signal.getsignal(sig) is None for sig in stop_signals):  # None: set outside Python
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for sig in stop_signals:  # one at a time: whatever was swapped is put back below
            previous[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
        yield
    finally:
        interrupted: BaseException | None = None
        for held, handler in previous.items():
            while True:  # signal.signal() first runs pending handlers; one may raise, then retry
                try:
                    signal.signal(held, handler)
                    break
                except BaseException as exc:
                    interrupted = interrupted or exc
        for signum in dict.fromkeys(caught):  # each signal caught, once, in the order they came
            signal.raise_signal(signum)
        if interrupted is not None:
            raise interrupted
