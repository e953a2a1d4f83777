"""Taking over an etcd holder that stopped renewing, at its TTL, against a real etcd server.

A standby watching the key sees each renewal (a new mod revision); once the holder's granted TTL
has passed on the standby's clock since the last one, it deletes the key in a Txn guarded by the
revisions it saw. These tests prove that path ran (the holder's etcd lease is kept alive, so
etcd's own expiry cannot be what freed the key), that it never fires on a holder that renews,
and that a stale sighting's delete is refused by the guard.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

import pytest

pytest.importorskip("etcd3gw")

from procs import wait_for
from singleton_tasks.backends.etcd import EtcdBackend
from singleton_tasks.clock import ManualClock
from singleton_tasks.election import LeaderElector
from singleton_tasks.etcd_servers import EtcdCluster

TTL = 2.0


@pytest.fixture
def backends(etcd_cluster: EtcdCluster) -> Iterator[tuple[Any, Any]]:
    """The holder's and the standby's backends: separate clients, as in two processes."""
    holder, standby = EtcdBackend(etcd_cluster.etcd_url), EtcdBackend(etcd_cluster.etcd_url)
    yield holder, standby
    holder.close()
    standby.close()


def counting_requests(backend: Any) -> list[str]:
    """The operations ``backend``'s client sends from now on, in order (the client is real; this
    only records what it is asked)."""
    sent: list[str] = []
    post = backend.client.post

    def recording(op: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        sent.append(op)
        return post(op, path, body)
    backend.client.post = recording
    return sent


class KeepAlive:
    """Keeps an etcd lease alive by keepalives alone, as a holder stuck between its keepalive and
    its guarded write would: etcd never expires the key, yet the holder's validity ends."""

    def __init__(self, backend: Any, lease_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(backend, lease_id), daemon=True)
        self._thread.start()

    def _run(self, backend: Any, lease_id: int) -> None:
        while not self._stop.wait(0.3):
            backend.client.keepalive(lease_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_a_holder_that_stops_renewing_is_taken_over_at_its_ttl_by_a_guarded_delete(backends: tuple[Any, Any],
                                                                                     caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    holder_backend, standby_backend = backends
    holder = holder_backend.lease("job", TTL)
    standby = standby_backend.lease("job", TTL)
    elected = threading.Event()
    elected_at: list[float] = []
    holder_held_then: list[bool] = []

    def on_elected() -> None:
        elected_at.append(time.monotonic())
        holder_held_then.append(holder.held)
        elected.set()

    assert holder.acquire(blocking=False)
    elector = LeaderElector(standby, on_elected=on_elected).start()
    keepalive = None
    try:
        wait_for(lambda: standby.free_in() not in (None, TTL), 5, "the standby to sight the holder's key")
        for _ in range(3):  # each renewal the watch shows moves the standby's take-over point
            time.sleep(0.3)  # the holder's pace: the sighting must move with each renewal
            renewed_at = time.monotonic()
            assert holder.renew()
            mod = holder_backend.client.range(holder.key)[0].mod_revision
            wait_for(lambda: standby._sighting is not None and standby._sighting.mod == mod, 5,
                     "the standby to see the renewal")
            assert TTL - 0.2 < standby.free_in() <= TTL, "free again a granted TTL after the renewal was seen"
        assert not elected.is_set()
        grant = holder._grant
        keepalive = KeepAlive(holder_backend, grant.lease_id)  # etcd's expiry can free nothing now
        assert elected.wait(TTL + 3), "the standby took over"
        took = elected_at[0] - renewed_at
        print(f"\nlast renewal sent -> standby leads: {took * 1000:.0f} ms (ttl {TTL:g} s)")
        assert holder_held_then == [False], "never while the holder's own validity lasted"
        assert took >= TTL - 0.1
        assert holder_backend.client.time_to_live(grant.lease_id) > 0, "the holder's etcd lease still lives"
        assert [r for r in caplog.records if "taking over" in r.getMessage() and r.name.endswith("etcd.lease")]
        assert standby.token > grant.token
        assert not holder.renew(), "the old holder's next renewal finds the key gone"
        assert not holder.held
    finally:
        if keepalive is not None:
            keepalive.stop()
        elector.stop()


def test_a_renewing_holder_is_never_deleted_and_the_watching_standby_asks_nothing(backends: tuple[Any, Any],
                                                                                  caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    holder_backend, standby_backend = backends
    holder_elector = LeaderElector(holder_backend.lease("job", TTL)).start()
    assert holder_elector.wait_for_leadership(5)
    standby = standby_backend.lease("job", TTL)
    standby_elector = LeaderElector(standby).start()
    try:
        wait_for(lambda: standby.free_in() not in (None, TTL), 5, "the standby to sight the holder's key")
        sent = counting_requests(standby_backend)
        token = holder_elector.lease.token
        key = holder_elector.lease.key
        first = holder_backend.client.range(key)[0].mod_revision
        # Seven renewals (one revision each: nothing else writes) span more than two TTLs.
        wait_for(lambda: holder_backend.client.range(key)[0].mod_revision >= first + 7, 4 * TTL,
                 "seven renewals by the holder")
        assert holder_elector.is_leader and holder_elector.lease.token == token
        assert not standby_elector.is_leader
        assert [op for op in sent if op != "timetolive"] == [], "a standby the watch informs sends nothing"
        assert not [r for r in caplog.records if "taking over" in r.getMessage()]
    finally:
        standby_elector.stop()
        holder_elector.stop()


def test_a_stale_sighting_sends_a_delete_that_the_guard_refuses(backends: tuple[Any, Any], caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="singleton_tasks.etcd.lease")
    holder_backend, standby_backend = backends
    clock = ManualClock()
    holder = holder_backend.lease("job", TTL)
    standby = standby_backend.lease("job", TTL, clock=clock)  # no watch: sightings come from attempts alone
    assert holder.acquire(blocking=False)
    assert not standby.acquire(blocking=False)
    assert standby.free_in() is None, "without a healthy watch, the usual retry pace"
    sighting = standby._sighting
    assert sighting is not None and sighting.granted == TTL
    assert holder.renew()  # a renewal the standby does not see
    clock.advance(TTL + 0.1)
    sent = counting_requests(standby_backend)
    assert not standby.acquire(blocking=False)
    assert sent[0] == "txn", "the guarded delete was sent"
    assert [r for r in caplog.records if "not deleting" in r.getMessage()], "and refused"
    assert holder.held and holder.renew(), "the holder kept its key"
    assert standby._sighting.mod > sighting.mod and standby._sighting.seen == clock(), "the sighting was refreshed"
    assert not [r for r in caplog.records if "taking over" in r.getMessage()]
    holder.release()
    assert standby.acquire(blocking=False), "a free key is taken as usual"
    assert standby._sighting is None
    standby.release()


def test_an_answer_read_before_a_heard_delete_is_not_sighted(backends: tuple[Any, Any]) -> None:
    """A refused attempt whose answer shows the key, but whose delete the watch heard before the
    answer was looked at, must not leave a sighting: the standby would wait a TTL for nobody."""
    holder_backend, standby_backend = backends
    holder = holder_backend.lease("job", TTL)
    standby = standby_backend.lease("job", TTL)
    assert holder.acquire(blocking=False)
    woken = threading.Event()
    stop = standby.on_release(woken.set)
    try:
        wait_for(standby._watching, 5, "the standby's watch to open")
        txn = standby_backend.client.txn
        released = []

        def txn_then_release(*args: Any, **kwargs: Any) -> Any:
            answer = txn(*args, **kwargs)
            if not released:  # the acquire's Txn, refused: the holder releases before it is read
                released.append(True)
                holder.release()
                assert woken.wait(5), "the watch heard the delete"
            return answer
        standby_backend.client.txn = txn_then_release
        assert not standby.acquire(blocking=False), "refused: the key was there when it was read"
        standby_backend.client.txn = txn
        assert released and standby._sighting is None, "the deleted key was not sighted"
        assert standby.free_in() == TTL
        assert standby.acquire(blocking=False), "the next attempt asks at once and takes the free key"
    finally:
        stop()
        standby.release()
