"""Sentinel-managed masters as lease nodes: one ``redis+sentinel://`` URL is one node.

``redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[?db=N&sentinel_password=P]``
names the sentinels that watch one master (the service ``SERVICE``); the port defaults to
26379, ``db`` to 0. The password is the master's (``AUTH``), ``sentinel_password`` the
sentinels' own. The client is redis-py's ``Sentinel(...).master_for(SERVICE)``: every new
connection asks the sentinels where the master is, so after a failover the node is reached at
its new master.

Guarantees: a URL is parsed without any network call; a URL without a service, with a bad
port or db, or with an unknown option raises ``ValueError`` saying which part is wrong (the
settings layer adds the setting's name and value). Not guaranteed: that a promoted replica has
every write its old master acknowledged (Redis replication is asynchronous): see the README's
"Choosing a backend" on what that means for fencing tokens.

Kombu's and Celery's own ``sentinel://host:port;sentinel://host:port`` spelling does not name
the service (Celery reads it from ``broker_transport_options["master_name"]``), so it cannot
stand for one node alone; ``parse_sentinel_url`` says what to write instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote

import redis
from redis.sentinel import Sentinel

SCHEME = "redis+sentinel://"
#: The form, for messages.
FORM = f"{SCHEME}host:port[,host:port]/SERVICE?db=N"
#: Kombu's spelling, refused with this hint (see the module docstring).
KOMBU_SCHEME = "sentinel://"
KOMBU_HINT = (f"one {FORM} URL per sentinel-managed master: kombu's sentinel:// names no service"
              " (Celery takes it from broker_transport_options['master_name'])")
DEFAULT_PORT = 26379
OPTIONS = ("db", "sentinel_password")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL: where the sentinels are and which master they name."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``url``; ``ValueError`` naming the wrong part (see the module docstring for the form)."""
    if not url.startswith(SCHEME):
        raise ValueError(f"not a {SCHEME} URL")
    rest, _, query = url[len(SCHEME):].partition("?")
    netloc, _, path = rest.partition("/")
    service = unquote(path.strip("/"))
    if not service or "/" in service:
        raise ValueError("the service name is missing")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
        if not colon:  # a lone name before @ is a password, as redis-py reads redis://secret@host
            username, password = None, unquote(user)
    sentinels = tuple(_host_port(part) for part in hosts.split(","))
    options = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    db_text = options.get("db", "0")
    if not db_text.isdigit():
        raise ValueError(f"db={db_text!r} is not a database number")
    return SentinelURL(sentinels, service, int(db_text), username, password, options.get("sentinel_password") or None)


def _host_port(part: str) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [IPv6]:port
        host, _, tail = part[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"a sentinel address is empty ({part!r}): host:port,host:port")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"sentinel {part!r}: port {port_text!r} is not a TCP port (1-65535)")
    return host, int(port_text)


def master_client(parsed: SentinelURL, options: Mapping[str, Any]) -> "redis.Redis":
    """redis-py's client of the master ``parsed`` names; ``options`` (timeouts, retries) apply to
    the sentinels and the master alike. No network call until the first command."""
    sentinel_options = dict(options)
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call]
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        parsed.service, db=parsed.db, username=parsed.username, password=parsed.password)
    return client
