"""stop_signals_held: real SIGTERM and SIGINT sent to this process while they are held."""

from __future__ import annotations

import os
import signal
import threading

from singleton_tasks.interrupts import stop_signals_held


def test_signals_caught_while_held_are_each_acted_on_afterwards_in_order() -> None:
    seen: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: seen.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with stop_signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # a repeat is acted on once
            for _ in range(1000):  # handlers run between bytecodes: give them every chance
                pass
            assert seen == [], "nothing acted on while held"
        assert seen == [signal.SIGINT, signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not None and seen.count(signal.SIGINT) == 1
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
        assert seen[-1] == signal.SIGTERM, "the original handlers are back"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_outside_the_main_thread_nothing_is_held() -> None:
    handlers: list[object] = []

    def run() -> None:
        with stop_signals_held():
            handlers.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    assert handlers == [before]
