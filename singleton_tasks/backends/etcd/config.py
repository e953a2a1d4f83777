"""Where an etcd cluster is and how to reach it: ``EtcdConfig``, read from an ``etcd://`` URL.

Guarantees: ``parse_etcd_url`` accepts exactly the URLs its docstring shows and returns an
``EtcdConfig`` with no endpoint twice; anything else raises ``ConfigurationError`` naming the
setting and the value, with its password shown as ``***``. Labels (``EtcdConfig.labels``) never
contain a password. Nothing here touches the network or needs an etcd client library.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable
from urllib.parse import parse_qsl, unquote

from ...errors import ConfigurationError

DEFAULT_PORT = 2379


@dataclass(frozen=True)
class EtcdConfig:
    """One etcd cluster: its client endpoints, TLS files and credentials (from ``parse_etcd_url``)."""

    endpoints: tuple[tuple[str, int], ...]
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def labels(self) -> tuple[str, ...]:
        """One per endpoint, ``etcd://host:port`` (``etcds://`` with TLS), never a password."""
        scheme = "etcds" if self.tls else "etcd"
        return tuple(f"{scheme}://{_hostport(host, port)}" for host, port in self.endpoints)

    def only(self, index: int) -> "EtcdConfig":
        """The same cluster reached through endpoint ``index`` alone (``check`` tests each one)."""
        return replace(self, endpoints=(self.endpoints[index],))


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_PARAMS = ("ca", "cert", "key")


def parse_etcd_url(setting: str, value: object) -> EtcdConfig:
    """``etcd://[user:password@]host[:port][,host[:port]...][?ca=PATH&cert=PATH&key=PATH]``, or ``etcds://`` (TLS).

    The port defaults to 2379. ``ca`` is the CA bundle that signs the servers' certificates
    (without it, the system's); ``cert`` and ``key`` a client certificate, given together.
    Percent-escape ``@ : , / ?`` in a user or password. Raises ``ConfigurationError`` naming
    ``setting`` and the value (password hidden) for anything else.
    """
    allowed = ("etcd://[user:password@]host[:port][,host[:port]...][?ca=PATH&cert=PATH&key=PATH] "
               "or etcds://... for TLS")
    if not isinstance(value, str):
        raise ConfigurationError(setting, value, allowed)
    shown = _hide_password(value)

    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(setting, shown, f"{why}; expected {allowed}")

    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("etcd", "etcds"):
        raise bad("the scheme must be etcd:// or etcds://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path:
        raise bad("an etcd URL has no path")
    userinfo, at, hosts = netloc.rpartition("@")
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        user, password = unquote(raw_user), unquote(raw_password)
        if not user or not colon or not password:
            raise bad("credentials are user:password@")
    endpoints: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, port = _parse_endpoint(part.strip(), bad)
        if (host, port) in endpoints:
            raise bad(f"endpoint {_hostport(host, port)} is given twice")
        endpoints.append((host, port))
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad(f"cannot read the parameters {query!r}") from None
    for name, param in pairs:
        if name not in _PARAMS:
            raise bad(f"unknown parameter {name!r} (known: {', '.join(_PARAMS)})")
        if name in params or not param:
            raise bad(f"parameter {name!r} must be given once, with a value")
        params[name] = param
    if params and scheme != "etcds":
        raise bad("ca, cert and key need etcds:// (TLS)")
    if ("cert" in params) != ("key" in params):
        raise bad("cert and key go together")
    return EtcdConfig(tuple(endpoints), scheme == "etcds", params.get("ca"), params.get("cert"),
                      params.get("key"), user, password)


def _hide_password(url: str) -> str:
    """``url`` as it may be shown: the password (split as ``parse_etcd_url`` splits it) as ``***``."""
    scheme, sep, rest = url.partition("://")
    netloc, query_sep, query = rest.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}{query_sep}{query}"


def _parse_endpoint(part: str, bad: Callable[[str], ConfigurationError]) -> tuple[str, int]:
    if part.startswith("["):  # [IPv6]:port
        host, close, after = part[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise bad(f"bad endpoint {part!r}")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise bad("every endpoint needs a host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad(f"bad port {port_text!r} in {part!r}")
    return host, int(port_text)
