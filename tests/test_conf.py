"""Settings: defaults, fallbacks, and a clear error for every bad value."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from singleton_tasks import ConfigurationError, settings_for
from singleton_tasks.conf import read_settings


def make_app(**conf) -> Celery:
    app = Celery("conf-test", set_as_current=False)
    app.conf.update({"broker_url": "redis://127.0.0.1:6399/1", **conf})
    return app


def test_defaults_beat_the_fastest_peer() -> None:
    s = settings_for(make_app())
    assert s.backend_urls == ("redis://127.0.0.1:6399/1",), "the Redis broker is the default lease node"
    assert s.lease_ttl == 5.0 and s.renew_interval <= s.lease_ttl / 3 and s.retry_interval <= 0.5
    assert s.task_ttl == 30.0 and s.key_prefix == "singleton:" and s.missed_runs == "coalesce"


def test_settings_are_read_once_and_frozen() -> None:
    app = make_app(singleton_lease_ttl=3)
    first = settings_for(app)
    app.conf.singleton_lease_ttl = 9
    assert settings_for(app) is first
    with pytest.raises(AttributeError):
        first.lease_ttl = 1  # type: ignore[misc]


def test_a_list_of_nodes() -> None:
    urls = ["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0", "redis://127.0.0.1:3/0"]
    assert settings_for(make_app(singleton_redis_url=urls)).backend_urls == tuple(urls)


def test_a_non_redis_broker_needs_an_explicit_url() -> None:
    with pytest.raises(ConfigurationError) as err:
        settings_for(make_app(broker_url="amqp://guest@localhost//"))
    assert err.value.setting == "singleton_backend_url" and "amqp://" in str(err.value)


@pytest.mark.parametrize(
    "setting, value, says",
    [
        ("singleton_lease_ttl", 0, ">= 0.5"),
        ("singleton_lease_ttl", "5", ">= 0.5"),
        ("singleton_lease_ttl", True, ">= 0.5"),
        ("singleton_renew_interval", 2.5, "less than half"),
        ("singleton_renew_interval", -1, ">= 0.01"),
        ("singleton_retry_interval", 0, ">= 0.01"),
        ("singleton_task_ttl", 0.1, ">= 0.5"),
        ("singleton_on_busy", "wait", "'skip', 'retry', 'raise'"),
        ("singleton_missed_runs", "all", "'coalesce', 'skip', 'catch_up'"),
        ("singleton_catch_up_limit", 0, "whole number"),
        ("singleton_key_prefix", "a{b}", "without braces"),
        ("singleton_key_prefix", "", "non-empty"),
        ("singleton_redis_url", "http://x", "redis:// URL"),
        ("singleton_redis_url", [], "redis:// URL"),
        ("singleton_redis_url", ["redis://a:1/0", "redis://b:1/0"], "odd number"),
        ("singleton_redis_url", ["redis://a:1/0"] * 3, "once"),
        ("singleton_missed_grace", -1, ">= 0"),
        ("singleton_beat_lease_name", "a b", "without braces or spaces"),
    ],
)
def test_every_bad_setting_names_itself_and_its_value(setting, value, says) -> None:
    conf = {"broker_url": "redis://127.0.0.1:6399/1", "singleton_lease_ttl": 5, setting: value}
    with pytest.raises(ConfigurationError) as err:
        read_settings(conf)
    message = str(err.value)
    assert err.value.setting == setting and setting in message
    assert repr(value) in message and says in message


def test_django_style_namespace() -> None:
    class DjangoSettings:
        CELERY_BROKER_URL = "redis://127.0.0.1:6399/2"
        CELERY_SINGLETON_LEASE_TTL = 7
        CELERY_SINGLETON_MISSED_RUNS = "skip"

    app = Celery("django-style", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    s = settings_for(app)
    assert (s.lease_ttl, s.missed_runs, s.backend_urls) == (7.0, "skip", ("redis://127.0.0.1:6399/2",))


def test_a_namespaced_error_names_the_setting_as_written() -> None:
    class DjangoSettings:
        CELERY_BROKER_URL = "redis://127.0.0.1:6399/2"
        CELERY_SINGLETON_MISSED_RUNS = "sometimes"

    app = Celery("django-bad", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    with pytest.raises(ConfigurationError) as err:
        settings_for(app)
    assert err.value.setting == "singleton_missed_runs"
    assert "CELERY_SINGLETON_MISSED_RUNS" in str(err.value) and "'sometimes'" in str(err.value)


def test_a_comma_joined_string_is_a_list_of_nodes(redis_nodes_factory) -> None:
    from singleton_tasks import Lease

    nodes = redis_nodes_factory(3)
    s = settings_for(make_app(singleton_redis_url=" , ".join(nodes.urls)))
    assert s.backend_urls == tuple(nodes.urls), "each URL between the commas is a node of its own"
    lease = Lease("comma", list(s.backend_urls), ttl=5)
    assert lease.acquire(blocking=False)
    assert all(node.client().get(lease.key) for node in nodes), "the lease is held on all three servers"
    lease.release()
    with pytest.raises(ConfigurationError) as err:
        settings_for(make_app(singleton_redis_url=nodes.urls[0] + ",http://127.0.0.1:80/"))
    assert err.value.setting == "singleton_redis_url" and "http://127.0.0.1:80/" in str(err.value)
    assert "%2C" in str(err.value), "the message says how to write a comma inside a URL"


def _spellings_of_one_node(node) -> list[tuple[str, str]]:
    p = node.port
    return [
        (f"redis://localhost:{p}/0", f"redis://127.0.0.1:{p}/0"),
        (f"redis://127.0.0.1:{p}", f"redis://127.0.0.1:{p}/0"),
        (f"redis://127.1:{p}/0", f"redis://127.0.0.1:{p}/0"),  # 127.1 is resolved, to 127.0.0.1
        (f"redis://127.0.0.1:{p}/2", f"redis://127.0.0.1:{p}?db=2"),
        (f"unix://{node.dir}/redis.sock", f"unix://{node.dir}/../{node.dir.name}/redis.sock?db=0"),
    ]


def test_one_node_spelled_twice_is_refused_at_settings_time(redis_nodes_factory) -> None:
    nodes = redis_nodes_factory(2)
    node, other = nodes
    node.extra_args = ["--unixsocket", str(node.dir / "redis.sock")]
    node.restart()
    # Every loopback spelling is one address. [::1] and rediss:// cannot reach this node (it listens on
    # 127.0.0.1, without TLS) but still name its server, so they too are refused as duplicates.
    unreachable = [(f"redis://[::1]:{node.port}/0", f"rediss://localhost:{node.port}")]
    for first, second in _spellings_of_one_node(node) + unreachable:
        if (first, second) not in unreachable:  # one node indeed: what one writes the other reads
            redis.Redis.from_url(first).set("written as", first)
            assert redis.Redis.from_url(second).get("written as") == first.encode()
        urls = [first, other.url, second]
        with pytest.raises(ConfigurationError) as err:
            read_settings({"singleton_redis_url": urls})
        message = str(err.value)
        assert err.value.setting == "singleton_redis_url" and repr(urls) in message
        assert "same server and db" in message, message
    # The same server with other dbs is allowed here; building its NodeSet warns (test_nodes).
    urls = [f"redis://127.0.0.1:{node.port}/{db}" for db in range(3)]
    assert read_settings({"singleton_redis_url": urls}).backend_urls == tuple(urls)


def test_celery_singleton_check_refuses_a_node_spelled_twice_without_a_traceback(
    redis_nodes_factory, tmp_path
) -> None:
    import os
    import subprocess
    import sys

    nodes = redis_nodes_factory(2)
    urls = [f"redis://127.0.0.1:{nodes[0].port}", nodes[0].url, nodes[1].url]  # the first two: one node
    (tmp_path / "dupapp.py").write_text(
        "from celery import Celery\n"
        "app = Celery('dupapp')\n"
        f"app.conf.update(broker_url={nodes[1].url!r}, singleton_redis_url={urls!r})\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "dupapp", "singleton", "check"],
                          env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    assert "singleton_redis_url" in done.stderr and "same server and db" in done.stderr, output
