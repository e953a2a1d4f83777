"""A node's error is never mistaken for a refusal, and never silent (hardening items 1, 4, 8, 11).

Real redis-server processes with locked-down ACL users, a password, an evicting memory policy
and a full memory: the errors the nodes really send.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import redis
from celery import Celery

from procs import APPS
from singleton_tasks import AccessDenied, Claim, Lease, LeaseError, singleton_task
from singleton_tasks.backends.redis import FencedRecords, claim_slot
from singleton_tasks.backends.redis.nodes import NodeSet
from singleton_tasks.backends import log_startup_warnings
from singleton_tasks.backends.redis import RedisBackend
from singleton_tasks.backends.redis.probes import eviction_warnings
from singleton_tasks.task import close_backends

#: Everything the library needs, as the README's security section gives it.
MINIMAL_ACL = ("~singleton:* &singleton:* +evalsha +eval +get +set +incr +pexpire +pttl +del +publish +hget +hset "
               "+hgetall +hdel +hlen +hkeys +subscribe").split()


def acl_user(node, name: str, *rules: str) -> str:
    """A user with exactly ``rules`` on ``node``; returns its URL."""
    node.client().acl_setuser(name, enabled=True, passwords=["+pw"], reset_keys=True, reset_channels=True,
                              commands=["-@all"], keys=[], channels=[])
    node.client().execute_command("ACL", "SETUSER", name, *rules)
    return f"redis://{name}:pw@127.0.0.1:{node.port}/0"


def test_a_claim_that_fails_is_not_reported_as_already_ran(redis_node, caplog) -> None:
    # The lease keys are allowed, the slot records are not: NOPERM on the claim only.
    url = acl_user(redis_node, "noslots", "~singleton:{task:*", "~singleton:{beat:*", "&singleton:*",
                   *[r for r in MINIMAL_ACL if r.startswith("+")])
    nodes = NodeSet([url], 1.0)
    claim = claim_slot(nodes, "singleton:{slots:beat/report}", 1000, 0, 60)
    assert claim.outcome is Claim.FAILED, claim
    assert "NoPermissionError" in claim.detail and "127.0.0.1" in claim.detail, "the node's own error, named"

    app = Celery("claims", set_as_current=False)
    app.conf.update(broker_url="memory://", singleton_redis_url=url, singleton_task_ttl=2)
    ran = []

    @singleton_task(app=app, name="report", shared=False)
    def report(self):
        ran.append(self.singleton.slot)

    try:
        with caplog.at_level(logging.INFO, logger="singleton_tasks"):
            result = report.apply(headers={"singleton_slot": "beat/report@1000"})
        assert result.state == "IGNORED" and not ran
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("NOT run" in w and "NoPermissionError" in w for w in warnings), caplog.text
        assert "already ran" not in caplog.text
        assert report.apply().state == "SUCCESS", "the lease itself works for this user"
    finally:
        close_backends()


def test_a_fenced_write_that_fails_names_each_nodes_error(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    for node in nodes.nodes[:2]:  # a full memory that may not be evicted: writes get OOM
        node.client().config_set("maxmemory-policy", "noeviction")
        node.client().config_set("maxmemory", "1")
    records = FencedRecords(NodeSet(nodes.urls, 1.0), "singleton:{beat:beat}:schedule")
    with pytest.raises(LeaseError) as err:
        records.write(5, {"entry": {"last_run_at": "2026-01-01T00:00:00+00:00"}})
    text = str(err.value)
    assert text.count("OOM") == 2 and f"127.0.0.1:{nodes[0].port}" in text and "1 of 3 nodes accepted" in text


def test_an_evicting_memory_policy_is_warned_about_naming_the_node_and_policy(redis_nodes_factory, caplog) -> None:
    nodes = redis_nodes_factory(3)
    nodes[1].client().config_set("maxmemory-policy", "allkeys-lru")
    locked = acl_user(nodes[2], "noconfig", *MINIMAL_ACL)  # may not run CONFIG: a warning, not a crash
    node_set = NodeSet([nodes[0].url, nodes[1].url, locked], 1.0)
    warnings = eviction_warnings(node_set)
    assert len(warnings) == 2, warnings
    assert f":{nodes[1].port}/0" in warnings[0] and "'allkeys-lru'" in warnings[0]
    assert f":{nodes[2].port}/0" in warnings[1] and "cannot read maxmemory-policy" in warnings[1]
    with caplog.at_level(logging.WARNING, logger="singleton_tasks.backends"):
        log_startup_warnings(RedisBackend(node_set))
    assert len(caplog.records) == 2 and all(w in caplog.text for w in warnings)
    assert Lease("still-works", node_set, ttl=5).acquire(blocking=False), "a warning, never a refusal to run"


def test_beat_warns_at_start_up_about_an_evicting_node(redis_node, caplog) -> None:
    from singleton_tasks import LeaderScheduler

    redis_node.client().config_set("maxmemory-policy", "volatile-lru")
    app = Celery("evicting", set_as_current=False)
    app.conf.update(broker_url="memory://", singleton_redis_url=redis_node.url, singleton_lease_ttl=2)
    scheduler = LeaderScheduler(app=app)
    try:
        with caplog.at_level(logging.WARNING, logger="singleton_tasks"):
            scheduler.tick()
        assert "'volatile-lru'" in caplog.text and str(redis_node.port) in caplog.text
    finally:
        scheduler.close()


def test_a_blocking_acquire_with_a_wrong_password_raises_instead_of_retrying(redis_nodes_factory, caplog) -> None:
    nodes = redis_nodes_factory(3)
    for node in nodes:
        node.client().config_set("requirepass", "right")
    wrong = [f"redis://:wrong@127.0.0.1:{n.port}/0" for n in nodes]
    lease = Lease("guarded", wrong, ttl=5, retry_interval=0.05)
    with pytest.raises(AccessDenied) as err:
        lease.acquire(timeout=30)  # would retry for 30 s if the error were taken as transient
    assert str(nodes[0].port) in str(err.value) and "AuthenticationError" in str(err.value)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "failed (acquire)" in r.getMessage()]
    assert len(errors) == 3, "one ERROR per node"
    assert not lease.acquire(blocking=False), "a non-blocking attempt (the elector's) just fails"
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3, "and is not logged again"
    # One node of three misconfigured leaves a majority: the lease works and says why it is short.
    mixed = [wrong[0]] + [f"redis://:right@127.0.0.1:{n.port}/0" for n in nodes.nodes[1:]]
    assert Lease("guarded", mixed, ttl=5).acquire(timeout=5)


def celery_check(urls: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(APPS), SINGLETON_TEST_BROKER="memory://",
               SINGLETON_TEST_NODES=",".join(urls), SINGLETON_TEST_LOG=urls[0])
    return subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "singleton", "check"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_check_runs_the_real_operations_not_just_ping(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(3)
    ping_only = acl_user(nodes[1], "pingonly", "+ping", "~*")
    minimal = acl_user(nodes[2], "minimal", *MINIMAL_ACL)
    assert redis.Redis.from_url(ping_only).ping(), "PING alone succeeds for this user"
    result = celery_check([nodes[0].url, ping_only, minimal])
    assert result.returncode != 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line[:6] for line in lines[:3]] == ["ok    ", "FAIL  ", "ok    "], result.stdout
    assert "NoPermissionError" in lines[1] and "acquire" in lines[1], "the node's own error and the operation"
    assert "1 of 3 nodes failed" in result.stderr
    assert nodes[2].client().keys("singleton:*") == [], "the check leaves no keys behind"
    everything = celery_check(nodes.urls)
    assert everything.returncode == 0, everything.stdout + everything.stderr


def test_the_minimal_acl_is_exact(redis_node) -> None:
    """The README's ACL rule is enough for every operation, and no part of it can be dropped."""
    from singleton_tasks.backends.redis.probes import exercise_node

    def problem(rules: list[str]) -> str | None:
        redis_node.client().flushall()
        redis_node.client().script_flush()  # so the EVAL fallback is exercised too
        nodes = NodeSet([acl_user(redis_node, "probe", *rules)], 1.0)
        try:
            return exercise_node(nodes, 0, "singleton:", 1.0)
        finally:
            nodes.close()

    assert problem(MINIMAL_ACL) is None
    needless = [rule for rule in MINIMAL_ACL if problem([r for r in MINIMAL_ACL if r != rule]) is None]
    assert not needless, f"not needed: {needless}"
