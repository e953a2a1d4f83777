"""Settings: defaults, fallbacks, and a clear error for every bad value."""

from __future__ import annotations

import pytest
from celery import Celery

from singleton_tasks import ConfigurationError, settings_for
from singleton_tasks.conf import read_settings


def make_app(**conf) -> Celery:
    app = Celery("conf-test", set_as_current=False)
    app.conf.update({"broker_url": "redis://127.0.0.1:6399/1", **conf})
    return app


def test_defaults_beat_the_fastest_peer() -> None:
    s = settings_for(make_app())
    assert s.redis_urls == ("redis://127.0.0.1:6399/1",), "the Redis broker is the default lease node"
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
    assert settings_for(make_app(singleton_redis_url=urls)).redis_urls == tuple(urls)


def test_a_non_redis_broker_needs_an_explicit_url() -> None:
    with pytest.raises(ConfigurationError) as err:
        settings_for(make_app(broker_url="amqp://guest@localhost//"))
    assert err.value.setting == "singleton_redis_url" and "amqp://" in str(err.value)


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
    assert (s.lease_ttl, s.missed_runs, s.redis_urls) == (7.0, "skip", ("redis://127.0.0.1:6399/2",))


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
