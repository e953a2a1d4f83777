"""Settings read from a Celery app's configuration, validated once into a frozen object.

Every key is read from ``app.conf`` with a fallback, so each way Celery is configured works
as it is: ``app.conf.singleton_lease_ttl = 5``, ``CELERY_SINGLETON_LEASE_TTL = 5`` in Django
settings loaded with ``namespace="CELERY"``, or ``"singleton_lease_ttl"`` in a Flask app's
``CELERY`` dict. A bad value raises ``ConfigurationError`` naming the setting and the value.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import ConfigurationError
from .timing import default_renew_interval, default_retry_interval
from .nodes import check_independent

MISSED_RUN_POLICIES = ("coalesce", "skip", "catch_up")
ON_BUSY_POLICIES = ("skip", "retry", "raise")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

#: Message headers set by the beat scheduler and read by singleton tasks.
SLOT_HEADER = "singleton_slot"
TOKEN_HEADER = "singleton_token"


@dataclass(frozen=True)
class Settings:
    """What the Celery layer needs, checked. Times are in seconds."""

    redis_urls: tuple[str, ...]
    key_prefix: str = "singleton:"
    #: The beat leader lease: a crashed leader is replaced after about this long.
    lease_ttl: float = 5.0
    renew_interval: float = 5.0 / 3
    retry_interval: float = 0.5
    #: A running singleton task's lease, renewed in the background while it runs.
    task_ttl: float = 30.0
    on_busy: str = "skip"
    busy_retry_countdown: float = 5.0
    missed_runs: str = "coalesce"
    catch_up_limit: int = 10
    #: A due run later than this is "missed" under the ``skip`` policy.
    missed_grace: float = 10.0
    beat_lease_name: str = "beat"
    #: How long a beat slot's "already ran" mark is kept, for deduplicating redeliveries.
    slot_memory: float = 86400.0


def _number(name: str, value: Any, minimum: float, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigurationError(name, value, f"a number of seconds >= {minimum}")
    return float(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise ConfigurationError(name, value, "one of " + ", ".join(repr(a) for a in allowed))
    return str(value)


def _split_urls(value: str) -> list[str]:
    """The node URLs in a string: one, or several joined with commas."""
    if "," not in value:
        return [value]
    parts = [part.strip() for part in value.split(",")]
    if not all(part.startswith(REDIS_SCHEMES) for part in parts):
        raise ConfigurationError(
            "singleton_redis_url", value,
            "a Redis URL or a list of them; a comma separates node URLs, but not every part between commas"
            " is a redis://, rediss:// or unix:// URL (write a comma inside a URL, e.g. in a password, as %2C)",
        )
    return parts


def _redis_urls(conf: Mapping[str, Any]) -> tuple[str, ...]:
    """The lease nodes' URLs: an odd number, no node twice however spelled.

    From ``singleton_redis_url`` (a URL, a list of them, or one string of them joined with
    commas), else from a Redis broker URL.
    """
    value = conf.get("singleton_redis_url")
    if value is None:
        broker = conf.get("broker_url")
        if isinstance(broker, str) and broker.startswith(REDIS_SCHEMES):
            return (broker.split(";")[0],)
        raise ConfigurationError(
            "singleton_redis_url", value,
            f"a Redis URL or a list of them (the broker URL {broker!r} is not a Redis URL, so it cannot be the default)",
        )
    urls = _split_urls(value) if isinstance(value, str) else value
    if not isinstance(urls, (list, tuple)) or not urls or not all(
        isinstance(u, str) and u.startswith(REDIS_SCHEMES) for u in urls
    ):
        raise ConfigurationError("singleton_redis_url", value, "a redis:// URL or a non-empty list of them")
    if len(urls) % 2 == 0:
        raise ConfigurationError("singleton_redis_url", value, "an odd number of independent Redis nodes (1, 3, 5)")
    check_independent("singleton_redis_url", value, urls)
    return tuple(urls)


def read_settings(conf: Mapping[str, Any]) -> Settings:
    """Validate the ``singleton_*`` keys of a Celery configuration."""
    get: Callable[[str], Any] = conf.get
    ttl = _number("singleton_lease_ttl", get("singleton_lease_ttl"), 0.5, Settings.lease_ttl)
    renew = _number("singleton_renew_interval", get("singleton_renew_interval"), 0.01, default_renew_interval(ttl))
    if renew >= ttl / 2:
        raise ConfigurationError(
            "singleton_renew_interval", get("singleton_renew_interval"),
            f"less than half of singleton_lease_ttl ({ttl / 2:g} s), so one failed renewal can be retried",
        )
    prefix = get("singleton_key_prefix")
    if prefix is None:
        prefix = Settings.key_prefix
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} "):
        raise ConfigurationError("singleton_key_prefix", prefix, "a non-empty string without braces or spaces")
    name = get("singleton_beat_lease_name") or Settings.beat_lease_name
    if not isinstance(name, str) or any(c in name for c in "{} "):
        raise ConfigurationError("singleton_beat_lease_name", name, "a string without braces or spaces")
    limit = get("singleton_catch_up_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError("singleton_catch_up_limit", limit, "a whole number >= 1")
    return Settings(
        redis_urls=_redis_urls(conf),
        key_prefix=prefix,
        lease_ttl=ttl,
        renew_interval=renew,
        retry_interval=_number("singleton_retry_interval", get("singleton_retry_interval"), 0.01, default_retry_interval(ttl)),
        task_ttl=_number("singleton_task_ttl", get("singleton_task_ttl"), 0.5, Settings.task_ttl),
        on_busy=_choice("singleton_on_busy", get("singleton_on_busy"), ON_BUSY_POLICIES, Settings.on_busy),
        busy_retry_countdown=_number(
            "singleton_busy_retry_countdown", get("singleton_busy_retry_countdown"), 0, Settings.busy_retry_countdown
        ),
        missed_runs=_choice("singleton_missed_runs", get("singleton_missed_runs"), MISSED_RUN_POLICIES,
                            Settings.missed_runs),
        catch_up_limit=limit if limit is not None else Settings.catch_up_limit,
        missed_grace=_number("singleton_missed_grace", get("singleton_missed_grace"), 0, Settings.missed_grace),
        beat_lease_name=name,
        slot_memory=_number("singleton_slot_memory", get("singleton_slot_memory"), 1, Settings.slot_memory),
    )


_cache: "weakref.WeakKeyDictionary[Any, Settings]" = weakref.WeakKeyDictionary()


def settings_for(app: Any) -> Settings:
    """The validated settings of a Celery app, read on first use and kept."""
    try:
        return _cache[app]
    except KeyError:
        pass
    try:
        settings = _cache[app] = read_settings(app.conf)
    except ConfigurationError as exc:
        namespace = getattr(app, "namespace", None)
        if not namespace:
            raise
        # Name the setting as the user wrote it, e.g. CELERY_SINGLETON_LEASE_TTL in Django.
        raise ConfigurationError(
            exc.setting, exc.value, f"{exc.allowed} (set as {namespace}_{exc.setting.upper()})"
        ) from None
    return settings
