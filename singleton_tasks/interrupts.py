"""Stop signals that arrive in the middle of work that must not be cut in half.

Python runs signal handlers in the main thread, between any two bytecodes. A handler that
raises (Celery beat's SIGTERM handler closes the scheduler, then raises SystemExit) would
end a publish half-way, after its slot was reserved and logged as sent.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends, then act on the first one caught.

    Only in the main thread (the one Python runs handlers in) and only over handlers
    Python can restore; elsewhere it holds nothing.
    """
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or any(
            signal.getsignal(sig) is None for sig in stop_signals):  # None: set outside Python

        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in stop_signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])
