"""LeaderElector against real redis-server processes, with leaders in other processes.

Timing bounds are checked against the shared monotonic clock: CLOCK_MONOTONIC is
system-wide on Linux, so instants taken in a child process compare with ours.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Iterator

import pytest

from fault_helpers import Children, kill_node
from procs import proc_state, wait_for
from singleton_tasks import LeaderElector, Lease
from singleton_tasks.election import next_wait


@pytest.fixture
def children() -> Iterator[Children]:
    group = Children()
    yield group
    group.close()


class ObservedLease(Lease):
    """A real ``Lease`` that records when the elector called acquire and renew, and how it went.

    ``hint=False`` hides when the holder's key ends (``free_in``), so a standby's only early
    wake-ups are release notices: what the handover tests prove.
    """

    def __init__(self, *args: Any, hint: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hint = hint
        self.attempts: list[tuple[float, float, bool]] = []  # (began, ended, acquired)
        self.renewals: list[list[Any]] = []  # [began, ended or None, renewed or None]

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        began = time.monotonic()
        ok = super().acquire(blocking, timeout)
        self.attempts.append((began, time.monotonic(), ok))
        return ok

    def free_in(self) -> float | None:
        return super().free_in() if self.hint else None

    def renew(self) -> bool:
        entry: list[Any] = [time.monotonic(), None, None]
        self.renewals.append(entry)
        ok = super().renew()
        entry[1], entry[2] = time.monotonic(), ok
        return ok


class Events:
    """Callback calls in order, with the instant each happened."""

    def __init__(self, elector: "LeaderElector | None" = None) -> None:
        self.log: list[tuple[str, float]] = []
        self.leader_during_lost: list[bool] = []
        self.elector = elector
        self._lock = threading.Lock()

    def elected(self) -> None:
        with self._lock:
            self.log.append(("elected", time.monotonic()))

    def lost(self) -> None:
        with self._lock:
            self.log.append(("lost", time.monotonic()))
            if self.elector is not None:
                self.leader_during_lost.append(self.elector.is_leader)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.log]

    def count(self, kind: str) -> int:
        return self.kinds().count(kind)

    def times(self, kind: str) -> list[float]:
        return [t for k, t in self.log if k == kind]


def only_notices_woke(lease: ObservedLease, since: float) -> bool:
    """A standby with a huge retry_interval tried once at start, then only after ``since``,
    when release notices woke it (one per node: an early one may find the keys still held
    on other nodes), and won with its last attempt."""
    first, *later = lease.attempts
    return (not first[2] and first[0] < since and bool(later)
            and all(began > since for began, _, _ in later) and later[-1][2])


# -- 1. next_wait, the loop's timing as a pure function ----------------------------------


def test_next_wait_a_follower_sleeps_until_the_holder_s_lease_ends() -> None:
    for _ in range(100):
        wait = next_wait(False, 0.0, ttl=5.0, renew_interval=5 / 3, retry_interval=0.5, free_in=3.2)
        assert 3.2 < wait <= 3.22, "just after the end, a few ms of jitter"
    assert next_wait(False, 0.0, 5.0, 5 / 3, 0.5, free_in=60.0) == 5.0, "never longer than a TTL"
    assert 0.25 <= next_wait(False, 0.0, 5.0, 5 / 3, 0.5, free_in=None) <= 0.5, "no hint: the retry interval"


def test_a_standby_asks_about_once_per_holder_ttl_not_every_retry(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    holder = LeaderElector(Lease("idle", nodes.urls, ttl=2.0)).start()
    lease = ObservedLease("idle", nodes.urls, ttl=2.0)
    standby = LeaderElector(lease, retry_interval=0.1)  # without the hint: 10-20 attempts a second
    try:
        assert holder.wait_for_leadership(10)
        standby.start()
        wait_for(lambda: lease.attempts, 5, "the standby's first attempt")
        began = time.monotonic()
        wait_for(lambda: time.monotonic() - began >= 4.0, 6, "four seconds of standing by")
        tried = sum(1 for at, _, _ in lease.attempts if at >= began)
        assert 1 <= tried <= 5, f"{tried} attempts in 4 s: it should sleep until the holder's keys end"
        assert not standby.is_leader and holder.is_leader, "the holder renewed all along"
        assert 0 < lease.free_in() <= 2.0, "the refused attempt said when the holder's lease ends"
    finally:
        standby.stop()
        holder.stop()


def test_next_wait_a_leader_renews_every_renew_interval() -> None:
    for retry in (0.1, 0.5, 5.0):
        assert next_wait(True, valid_for=9.9, ttl=10.0, renew_interval=3.0, retry_interval=retry) == 3.0


@pytest.mark.parametrize("retry_interval", [0.1, 0.5, 1.0, 2.0, 5.0])
def test_next_wait_after_a_failed_renewal_the_leader_tries_again_sooner(retry_interval) -> None:
    ttl, renew_interval = 3.0, 1.0
    normal = next_wait(True, 2.9, ttl, renew_interval, retry_interval)
    failed = next_wait(True, 2.9, ttl, renew_interval, retry_interval, renew_failed=True)
    assert normal == renew_interval
    assert 0 < failed < normal, (
        f"after a failed renewal the leader waits {failed}s, not sooner than its usual {normal}s "
        f"(retry_interval={retry_interval})")


def test_next_wait_a_leader_never_sleeps_past_one_third_of_the_ttl_before_its_deadline() -> None:
    ttl = 3.0
    for step in range(0, 61):
        valid_for = step * 0.05
        for renew_interval in (0.1, 0.5, 1.0, 1.4):
            for retry_interval in (0.05, 0.5, 5.0):
                for failed in (False, True):
                    wait = next_wait(True, valid_for, ttl, renew_interval, retry_interval, failed)
                    assert 0.0 <= wait <= max(0.0, valid_for - ttl / 3) + 1e-9, (valid_for, renew_interval, failed)
    assert next_wait(True, 1.0, ttl, 1.0, 0.5) == 0.0, "at the give-up point it acts at once"
    assert next_wait(True, 0.0, ttl, 1.0, 0.5) == 0.0
    assert next_wait(True, 1.5, ttl, 1.0, 0.5) == pytest.approx(0.5), "0.5 s left before giving up"


def test_next_wait_a_follower_waits_a_jittered_half_to_whole_retry_interval() -> None:
    retry_interval = 0.8
    samples = [next_wait(False, valid_for, 3.0, 1.0, retry_interval, failed)
               for valid_for in (0.0, 2.9) for failed in (False, True) for _ in range(500)]
    assert all(0.5 * retry_interval <= s <= retry_interval for s in samples)
    assert min(samples) < 0.55 * retry_interval and max(samples) > 0.95 * retry_interval, "jittered, not fixed"


# -- 2. graceful handover ----------------------------------------------------------------


def test_sigterm_to_the_leader_hands_over_within_a_second_by_notification(redis_nodes_factory, children) -> None:
    ttl, standby_retry = 2.0, 60.0  # the standby's next poll would be 30-60 s away
    nodes = redis_nodes_factory(3)
    leader = children.spawn("elector", name="handover", urls=nodes.urls, ttl=ttl)
    elected = leader.expect(event="elected", timeout=30)

    lease = ObservedLease("handover", nodes.urls, ttl=ttl, hint=False)
    events = Events()
    standby = LeaderElector(lease, on_elected=events.elected, on_lost=events.lost, retry_interval=standby_retry)
    standby.start()
    try:
        wait_for(lambda: lease.attempts, 5, "the standby's first attempt")
        assert not lease.attempts[0][2], "the standby found the lease taken"
        # Its next poll is 30 s away at least, and the leader's keys live 2 s after each
        # renewal: only the release notice can explain a fast takeover.
        term_at = time.monotonic()
        leader.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: events.count("elected"), 5, "the standby to take over")
        took = events.times("elected")[0] - term_at
        assert took < 1.0, f"graceful handover took {took:.3f}s"
        assert only_notices_woke(lease, term_at), lease.attempts
        assert standby.is_leader and lease.token is not None and lease.token > elected["token"]
    finally:
        standby.stop()
    leader.expect(event="sigterm")
    leader.expect(event="lost")
    stopped = leader.expect(event="stopped")
    assert stopped["took"] < 1.0, stopped
    assert leader.proc.wait(timeout=10) == 0, leader.stderr()


def test_stop_during_a_slow_renewal_still_hands_over_at_once(redis_nodes_factory) -> None:
    # A renewal that waits on a stopped node takes op_timeout; stop() arriving meanwhile
    # must not then wait for the next renewal slot (renew_interval = ttl / 3 = 3 s here).
    # Expected: stop() takes what is left of the renewal (< 0.3 s) plus a release that waits
    # 0.3 s on the stopped node plus ~0.2 s to stop the listeners; the standby, woken by the
    # release, takes over ~0.2 s after the release (its own wait on the stopped node).
    ttl, standby_retry = 9.0, 60.0
    nodes = redis_nodes_factory(3)
    leader_lease = ObservedLease("slow-renewal", nodes.urls, ttl=ttl, op_timeout=0.3)
    leader_events = Events()
    leader = LeaderElector(leader_lease, on_elected=leader_events.elected, on_lost=leader_events.lost)
    standby_lease = ObservedLease("slow-renewal", nodes.urls, ttl=ttl, op_timeout=0.2, hint=False)
    standby_events = Events()
    standby = LeaderElector(standby_lease, on_elected=standby_events.elected, retry_interval=standby_retry)
    leader.start()
    paused = nodes[2]
    assert paused.process is not None
    try:
        assert leader.wait_for_leadership(5)
        standby.start()
        wait_for(lambda: standby_lease.attempts, 5, "the standby's first attempt")
        paused.pause()
        wait_for(lambda: proc_state(paused.process.pid) == "T", 5, "node 2 to be stopped")
        seen = len(leader_lease.renewals)
        wait_for(lambda: len(leader_lease.renewals) > seen, ttl / 3 + 2, "the leader to start a renewal")
        stop_at = time.monotonic()
        leader.stop()
        stop_took = time.monotonic() - stop_at
        renewal = leader_lease.renewals[seen]
        assert renewal[1] is not None and renewal[1] > stop_at, "stop() came while the renewal was in flight"
        assert renewal[1] - renewal[0] > 0.25, "the renewal really waited on the stopped node"
        assert leader_events.kinds() == ["elected", "lost"]
        wait_for(lambda: standby_events.count("elected"), 8, "the standby to take over")
        took = standby_events.times("elected")[0] - stop_at
        assert took < 1.5 and stop_took < 2.0, (
            f"stop() took {stop_took:.3f}s and the handover {took:.3f}s; the renewal in flight ended "
            f"{renewal[1] - stop_at:.3f}s after stop() (renew_interval {leader.renew_interval}s)")
        assert only_notices_woke(standby_lease, stop_at), standby_lease.attempts
    finally:
        paused.resume()
        standby.stop()
        leader.stop()


# -- 3. crash takeover -------------------------------------------------------------------


def test_a_killed_leader_is_replaced_after_its_keys_expire_plus_at_most_one_poll(
    redis_nodes_factory, children
) -> None:
    ttl, retry = 1.0, 0.2
    nodes = redis_nodes_factory(3)
    leader = children.spawn("elector", name="crash", urls=nodes.urls, ttl=ttl)
    elected = leader.expect(event="elected", timeout=30)

    lease = ObservedLease("crash", nodes.urls, ttl=ttl)
    events = Events()
    standby = LeaderElector(lease, on_elected=events.elected, retry_interval=retry)
    probes = [node.client(socket_timeout=2, socket_connect_timeout=2) for node in nodes]
    standby.start()
    try:
        wait_for(lambda: lease.attempts, 5, "the standby's first attempt")
        # Kill the leader just after a renewal has reached every node, so that its keys have
        # close to a full TTL left everywhere (a renewal seen on one node may still be on its
        # way to the others).
        wait_for(lambda: min(p.pttl(lease.key) for p in probes) >= ttl * 1000 - 60, 5, "a fresh renewal",
                 interval=0.001)
        killed_at = time.monotonic()
        os.kill(leader.pid, signal.SIGKILL)
        expiries = []
        for probe in probes:
            read_at = time.monotonic()
            left_ms = probe.pttl(lease.key)
            assert left_ms > 0, "the killed leader's keys are still there: nobody released them"
            expiries.append(read_at + left_ms / 1000)
        assert leader.proc.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: events.count("elected"), ttl + retry + 3, "the standby to take over")
        elected_at = events.times("elected")[0]
        took = elected_at - killed_at
        majority_expired = sorted(expiries)[1]  # measured, not assumed: the bounds follow from it
        assert elected_at >= majority_expired, "it took over only once the keys expired on a majority"
        assert elected_at - majority_expired <= retry + 0.5, f"crash takeover took {took:.3f}s"
        assert took > ttl - 0.3, f"crash takeover took {took:.3f}s: the keys had most of a TTL left"
        assert lease.token is not None and lease.token > elected["token"]
    finally:
        standby.stop()
        for probe in probes:
            probe.close()


# -- 4. node losses ----------------------------------------------------------------------


def test_losing_one_node_of_three_changes_nothing(redis_nodes_factory) -> None:
    ttl = 1.0
    nodes = redis_nodes_factory(3)
    lease = ObservedLease("one-down", nodes.urls, ttl=ttl)
    events = Events()
    elector = LeaderElector(lease, on_elected=events.elected, on_lost=events.lost)
    with elector:
        assert elector.wait_for_leadership(5)
        kill_node(nodes[0])
        killed_at = time.monotonic()
        renewed_before = sum(1 for r in lease.renewals if r[2])
        while time.monotonic() < killed_at + 1.5 * ttl:
            assert elector.is_leader, f"lost leadership {time.monotonic() - killed_at:.3f}s after one node died"
            time.sleep(0.005)
        assert sum(1 for r in lease.renewals if r[2]) - renewed_before >= 2, "it kept renewing on two nodes"
        assert any(r[0] > killed_at and r[2] for r in lease.renewals)
        assert events.kinds() == ["elected"]


def test_majority_loss_steps_down_by_the_deadline_and_recovers(redis_nodes_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    ttl = 1.0
    nodes = redis_nodes_factory(3)
    lease = Lease("majority", nodes.urls, ttl=ttl)
    elector = LeaderElector(lease)
    events = Events(elector)
    elector.on_elected, elector.on_lost = events.elected, events.lost
    with elector:
        assert elector.wait_for_leadership(5)
        first_token = lease.token
        killed_at = time.monotonic()
        kill_node(nodes[1])
        kill_node(nodes[2])

        def deadline_bounds() -> tuple[float, float]:
            # The lease's deadline is valid_for() plus the instant it read its clock.
            before = time.monotonic()
            valid = lease.valid_for()
            return before + valid, time.monotonic() + valid

        earliest, deadline = deadline_bounds()
        assert deadline > killed_at, "it still led when the majority died"
        last_leader_at = None
        while not events.count("lost"):
            now = time.monotonic()
            assert now < killed_at + ttl + 2, "never stepped down"
            if elector.is_leader:
                last_leader_at = now
            # A renewal in flight during the kills may still have extended the deadline.
            low, high = deadline_bounds()
            earliest, deadline = max(earliest, low), max(deadline, high)
            time.sleep(0.002)
        lost_at = events.times("lost")[0]
        assert earliest <= killed_at + ttl, "no renewal sent after the kills succeeded"
        assert lost_at <= deadline + 0.05, f"stepped down {lost_at - deadline:.3f}s after its validity deadline"
        assert last_leader_at is None or last_leader_at < deadline
        assert not elector.is_leader and events.leader_during_lost == [False]
        assert any("failed (renew)" in r.getMessage() for r in caplog.records), "renewals really failed"

        for node in (nodes[1], nodes[2]):
            node.start()  # back empty: a majority of nodes answers again
        wait_for(lambda: events.count("elected") == 2, 5, "re-election once the nodes are back")
        assert elector.is_leader and lease.token is not None and lease.token > first_token
        assert events.kinds() == ["elected", "lost", "elected"], "on_lost ran exactly once in between"
    assert events.kinds() == ["elected", "lost", "elected", "lost"]


# -- 5. callbacks that raise ---------------------------------------------------------------


def test_raising_callbacks_are_logged_and_the_elector_carries_on(redis_nodes_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="singleton_tasks")
    ttl = 1.0
    nodes = redis_nodes_factory(3)
    lease = Lease("raising", nodes.urls, ttl=ttl)
    events = Events()

    def on_elected() -> None:
        events.elected()
        raise RuntimeError("boom in on_elected")

    def on_lost() -> None:
        events.lost()
        raise RuntimeError("boom in on_lost")

    def logged(what: str) -> int:
        return sum(1 for r in caplog.records
                   if f"{what} raised" in r.getMessage() and r.exc_info and r.exc_info[0] is RuntimeError)

    elector = LeaderElector(lease, on_elected=on_elected, on_lost=on_lost)
    elector.start()
    try:
        # The callback records its call and then raises: wait for the log line it leads to.
        wait_for(lambda: logged("on_elected") == 1 and elector.is_leader, 5, "the first election")
        elected_at = events.times("elected")[0]
        while time.monotonic() < elected_at + 1.5 * ttl:
            assert elector.is_leader, "a raising on_elected must not stop the renewals"
            time.sleep(0.005)

        # Take the lease away behind its back: a majority refuses the next renewal.
        deleted = 0
        for node in nodes:
            client = node.client(socket_timeout=2)
            deleted += client.delete(lease.key)
            client.close()
        assert deleted >= 2, "the keys were there on a majority, and are gone"
        wait_for(lambda: logged("on_lost") == 1, 3, "the loss to be noticed")
        wait_for(lambda: logged("on_elected") == 2 and elector.is_leader, 5, "re-election after a raising on_lost")
        assert any(t.name == "elector-raising" and t.is_alive() for t in threading.enumerate())
    finally:
        elector.stop()
    assert events.kinds() == ["elected", "lost", "elected", "lost"]
    assert logged("on_lost") == 2, "stop() ran the raising on_lost and still returned"


# -- 6. stop() ---------------------------------------------------------------------------


def test_stop_ends_leadership_once_is_idempotent_and_leaves_no_thread(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    before = set(threading.enumerate())
    lease = Lease("stopping", nodes.urls, ttl=1.0)
    elector = LeaderElector(lease)
    events = Events(elector)
    elector.on_elected, elector.on_lost = events.elected, events.lost
    elector.start()
    assert elector.wait_for_leadership(5)
    started = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in started if t.name == "elector-stopping"] == ["elector-stopping"]
    # (today also one release listener thread per node: every thread started must end)
    assert len(started) > 1, [t.name for t in started]

    elector.stop()
    assert events.kinds() == ["elected", "lost"] and events.leader_during_lost == [False]
    assert not elector.is_leader
    assert Lease("stopping", nodes.urls).holder() is None, "stop() released the lease"
    elector.stop()
    elector.stop(release=False)
    assert events.kinds() == ["elected", "lost"], "stop() is idempotent"
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_stop_without_release_ends_leadership_but_leaves_the_keys_to_expire(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    lease = Lease("keep-keys", nodes.urls, ttl=2.0)
    events = Events()
    elector = LeaderElector(lease, on_elected=events.elected, on_lost=events.lost).start()
    assert elector.wait_for_leadership(5)
    elector.stop(release=False)
    assert events.kinds() == ["elected", "lost"] and not elector.is_leader
    info = Lease("keep-keys", nodes.urls).holder()
    assert info is not None and info["pid"] == os.getpid()


def test_stopping_a_follower_calls_no_callback_and_leaves_no_thread(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    holder = Lease("taken", nodes.urls, ttl=5.0)
    assert holder.acquire(blocking=False)
    before = set(threading.enumerate())
    lease = ObservedLease("taken", nodes.urls, ttl=5.0, hint=False)  # keep trying: the point is stop()
    events = Events()
    elector = LeaderElector(lease, on_elected=events.elected, on_lost=events.lost, retry_interval=0.05).start()
    try:
        wait_for(lambda: len(lease.attempts) >= 3, 5, "a few failed attempts")
        assert not any(ok for _, _, ok in lease.attempts)
    finally:
        elector.stop()
    elector.stop()
    assert events.log == [] and not elector.is_leader
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []
    assert holder.renew(), "the follower never touched the holder's keys"
    holder.release()
