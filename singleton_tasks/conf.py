"""Settings read from a Celery app's configuration, validated once into a frozen object.

Every key is read from ``app.conf`` with a fallback, so each way Celery is configured works
as it is: ``app.conf.singleton_lease_ttl = 5``, ``CELERY_SINGLETON_LEASE_TTL = 5`` in Django
settings loaded with ``namespace="CELERY"``, or ``"singleton_lease_ttl"`` in a Flask app's
``CELERY`` dict. A bad value raises ``ConfigurationError`` naming the setting and the value.
"""

from __future__ import annotations

import importlib.util
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import backends, scheduler_hosts
from .errors import ConfigurationError
from .backend import Backend
from .timing import default_op_timeout, default_renew_interval, default_retry_interval

MISSED_RUN_POLICIES = ("coalesce", "skip", "catch_up")
ON_BUSY_POLICIES = ("skip", "retry", "raise")

#: Message headers set by the beat scheduler and read by singleton tasks.
SLOT_HEADER = "singleton_slot"
TOKEN_HEADER = "singleton_token"


@dataclass(frozen=True)
class Settings:
    """What the Celery layer needs, checked. Times are in seconds."""

    #: The store, validated: Redis node URLs (a quorum of independent masters), or one etcd URL.
    backend_urls: tuple[str, ...]
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
    #: The scheduler class the beat leader runs (``module:Class``, an alias, or a class).
    beat_scheduler: Any = scheduler_hosts.DEFAULT
    #: How long an entry's record of its recent slots outlives its last run.
    slot_memory: float = 86400.0
    #: Serve Prometheus metrics on this port (beat and worker processes); None: off.
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"

    def open_backend(self, timeout: float | None = None) -> Backend:
        """The store these settings name; ``timeout`` bounds each network wait (default: from the beat TTL)."""
        return backends.open_backend(self.backend_urls, prefix=self.key_prefix,
                                     timeout=timeout if timeout is not None else default_op_timeout(self.lease_ttl))


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


def _backend_urls(conf: Mapping[str, Any]) -> tuple[str, ...]:
    """The store: ``singleton_backend_url``, else ``singleton_redis_url``, else a Redis broker URL."""
    for setting in ("singleton_backend_url", "singleton_redis_url"):
        value = conf.get(setting)
        if value is None:
            continue
        if setting == "singleton_redis_url" and isinstance(value, str) and value.startswith(backends.ETCD_SCHEMES):
            raise ConfigurationError(setting, value, "a Redis URL (give an etcd URL as singleton_backend_url)")
        return backends.parse_urls(setting, value)
    broker = conf.get("broker_url")
    if isinstance(broker, str) and broker.startswith(backends.redis_backend.SCHEMES):
        return (broker.split(";")[0],)
    raise ConfigurationError(
        "singleton_backend_url", None,
        "a Redis URL, a list of them, or an etcd:// URL (the broker URL "
        f"{backends.without_passwords(broker) if isinstance(broker, str) else broker!r} is not a Redis URL, so it cannot"
        " be the default)",
    )


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
    host = get(scheduler_hosts.SETTING)
    if host is not None and not (isinstance(host, type) or (isinstance(host, str) and host.strip())):
        raise ConfigurationError(scheduler_hosts.SETTING, host, "a scheduler class or its import path, e.g. "
                                 "'django_celery_beat.schedulers:DatabaseScheduler'")
    if host == "singleton":
        raise ConfigurationError(scheduler_hosts.SETTING, host, "the scheduler class to lead, not singleton-tasks' own"
                                 " (set beat_scheduler = 'singleton' and name the class here)")
    limit = get("singleton_catch_up_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError("singleton_catch_up_limit", limit, "a whole number >= 1")
    return Settings(
        backend_urls=_backend_urls(conf),
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
        beat_scheduler=host if host is not None else Settings.beat_scheduler,
        slot_memory=_number("singleton_slot_memory", get("singleton_slot_memory"), 1, Settings.slot_memory),
        metrics_port=_metrics_port(get("singleton_metrics_port")),
        metrics_addr=_metrics_addr(get("singleton_metrics_addr")),
    )


def _metrics_port(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigurationError("singleton_metrics_port", value, "a TCP port number (1-65535), or None for no metrics")
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigurationError("singleton_metrics_port", value,
                                 "needs prometheus-client: pip install 'singleton-tasks[metrics]'")
    return value


def _metrics_addr(value: Any) -> str:
    if value is None:
        return Settings.metrics_addr
    if not isinstance(value, str) or not value:
        raise ConfigurationError("singleton_metrics_addr", value, "an address to bind, e.g. '0.0.0.0' or '127.0.0.1'")
    return value


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
