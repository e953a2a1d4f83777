"""Observer hooks: what the library reports as it happens, for Celery signals and metrics.

Events (with their fields): ``elected`` (name, token), ``stepped_down`` (name, why),
``renewed`` (name, seconds the renewal took, ok, valid_for), ``lease_lost`` (name, token),
``busy`` (name, task, policy), ``slot_deduplicated`` (name, task, slot, outcome),
``dispatched`` (name, slot, token), ``stale_token`` (name, token, highest),
``node_failing`` (name, node, error), ``node_recovered`` (name, node).

Nothing happens until an observer subscribes, so reporting costs one empty-list check. An
observer that raises is logged and never breaks the loop that reported (an elector, a
renewal, a beat tick, a task). Observers run in the reporting thread: they must be quick.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("singleton_tasks.events")

ELECTED = "elected"
STEPPED_DOWN = "stepped_down"
RENEWED = "renewed"
LEASE_LOST = "lease_lost"
DISPATCHED = "dispatched"
STALE_TOKEN = "stale_token"
BUSY = "busy"
SLOT_DEDUPLICATED = "slot_deduplicated"
NODE_FAILING = "node_failing"
NODE_RECOVERED = "node_recovered"

#: An observer gets the event's name and its fields.
Observer = Callable[[str, dict[str, Any]], None]

_observers: list[Observer] = []
_lock = threading.Lock()


def subscribe(observer: Observer) -> Callable[[], None]:
    """Call ``observer`` for every event from now on; returns the function that unsubscribes it."""
    with _lock:
        _observers.append(observer)

    def unsubscribe() -> None:
        with _lock:
            if observer in _observers:
                _observers.remove(observer)

    return unsubscribe


def emit(event: str, **fields: Any) -> None:
    """Report ``event`` to every observer; one that raises is logged, the others still run."""
    if not _observers:
        return
    for observer in list(_observers):
        try:
            observer(event, fields)
        except Exception:
            log.exception("observer %r raised on %s; carrying on", observer, event)
