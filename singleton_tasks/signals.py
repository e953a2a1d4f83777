"""Celery signals for what singleton-tasks does, in the style of ``celery.signals``.

Connect with ``@leader_elected.connect`` etc. The sender is the lease name (``beat:NAME``,
``task:TASK[:KEY]``), so ``connect(sender="beat:beat")`` filters; every signal also gets the
fields of its event as keyword arguments:

* ``leader_elected``: name, token - this process now leads (a beat replica, an elector).
* ``leader_stepped_down``: name, why - it no longer leads ("stopped", "lease lost", ...).
* ``lease_lost``: name, token - a running singleton task lost its lease (sender: the task).
* ``run_skipped_busy``: name, task, policy - a run found its lease held by another run.
* ``slot_deduplicated``: name, task, slot, outcome - a beat slot not run again
  (``already ran``, ``too old``, ``failed``).
* ``node_failing`` / ``node_recovered``: name, node (and error) - a store node stopped or
  started answering, once per change.

Celery's ``Signal.send`` logs a receiver that raises and goes on; the loop that reported never
stops because of a receiver.
"""

from __future__ import annotations

from typing import Any

from celery.utils.dispatch import Signal

from . import events

leader_elected = Signal(name="singleton_leader_elected", providing_args={"name", "token"})
leader_stepped_down = Signal(name="singleton_leader_stepped_down", providing_args={"name", "why"})
lease_lost = Signal(name="singleton_lease_lost", providing_args={"name", "token"})
run_skipped_busy = Signal(name="singleton_run_skipped_busy", providing_args={"name", "task", "policy"})
slot_deduplicated = Signal(name="singleton_slot_deduplicated", providing_args={"name", "task", "slot", "outcome"})
node_failing = Signal(name="singleton_node_failing", providing_args={"name", "node", "error"})
node_recovered = Signal(name="singleton_node_recovered", providing_args={"name", "node"})

_BY_EVENT = {
    events.ELECTED: leader_elected,
    events.STEPPED_DOWN: leader_stepped_down,
    events.BUSY: run_skipped_busy,
    events.SLOT_DEDUPLICATED: slot_deduplicated,
    events.NODE_FAILING: node_failing,
    events.NODE_RECOVERED: node_recovered,
    # events.LEASE_LOST: sent by the task itself, with the task as the sender.
}


def _send(event: str, fields: dict[str, Any]) -> None:
    signal = _BY_EVENT.get(event)
    if signal is not None:
        signal.send(sender=fields.get("name"), **fields)


events.subscribe(_send)
