"""Storage backends behind ``singleton_tasks.backend``'s contract, chosen by URL scheme.

``redis://``, ``rediss://``, ``unix://`` (one, or a list of independent masters under a
quorum): ``backends.redis``. ``etcd://`` and ``etcds://`` (the endpoints of one etcd cluster,
``etcd://host:port,host:port``): ``backends.etcd``, which needs the ``etcd`` extra.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from ..backend import Backend
from ..errors import ConfigurationError
from . import redis as redis_backend

log = logging.getLogger("singleton_tasks.backends")

ETCD_SCHEMES = ("etcd://", "etcds://")


def is_etcd(urls: Sequence[str]) -> bool:
    return len(urls) == 1 and urls[0].startswith(ETCD_SCHEMES)


def parse_urls(setting: str, value: Any) -> tuple[str, ...]:
    """Validate a backend setting: one etcd URL, or Redis node URLs (see ``backends.redis.parse_urls``)."""
    if isinstance(value, str) and value.startswith(ETCD_SCHEMES):
        from .etcd.config import parse_etcd_url  # only etcd users need etcd3gw installed

        parse_etcd_url(setting, value)
        return (value,)
    if isinstance(value, (list, tuple)) and any(isinstance(v, str) and v.startswith(ETCD_SCHEMES) for v in value):
        raise ConfigurationError(setting, value, "one etcd URL listing the cluster's endpoints "
                                 "(etcd://host:port,host:port), not a list: an etcd cluster is one store")
    return redis_backend.parse_urls(setting, value)


def open_backend(urls: Sequence[str], *, prefix: str = "singleton:", timeout: float = 1.0) -> Backend:
    """The backend for validated ``urls`` (``parse_urls``); ``timeout`` bounds each network wait."""
    if is_etcd(urls):
        from .etcd import EtcdBackend

        return EtcdBackend(urls[0], prefix=prefix, timeout=timeout)
    return redis_backend.RedisBackend(list(urls), prefix=prefix, timeout=timeout)


def without_passwords(url: str) -> str:
    """``url`` with any password replaced by ``**``, for logs and banners (never parses ports:
    an etcd URL lists several ``host:port`` after the credentials)."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1**@", url)


def log_startup_warnings(backend: Backend) -> None:
    """Log what ``backend.startup_warnings()`` finds, at WARNING; never raises."""
    try:
        for line in backend.startup_warnings():
            log.warning("singleton-tasks: %s", line)
    except Exception as exc:  # a check that cannot run is itself reported, and start-up goes on
        log.warning("singleton-tasks: could not check the store: %r", exc)
