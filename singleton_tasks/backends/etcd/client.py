"""One etcd cluster over its HTTP/JSON gateway (``etcd3gw``), reached through its endpoints in turn.

Guarantees:

* Each call goes to the current endpoint. A connection failure, a timeout or an "unavailable"
  answer (no leader, request timed out) moves it to the next endpoint and retries there, at
  most once per endpoint per call; when none answered, ``LeaseError`` names every endpoint
  with its own error ("no endpoint reachable"). Every other error is the cluster's answer and
  is raised at once: ``EtcdDenied`` for refused credentials or permissions (not transient),
  ``EtcdNotFound`` for an etcd lease that is gone, ``LeaseError`` for the rest.
* Each request waits at most ``timeout`` seconds for a connection and for each read, so a call
  returns within about ``len(endpoints) * timeout`` (twice that with a re-authentication).
* User and password are exchanged for a token (``/v3/auth/authenticate``); a token the
  cluster calls invalid or expired is replaced once and the request retried.
* int64 fields travel as decimal strings both ways; keys and values are base64. Values are
  whatever the caller stores (this library stores JSON): nothing read back is unpickled.
* ``KeyWatcher`` calls back on each DELETE of a key, restarting its watch after errors, after a
  server-side cancel and after ``WATCH_IDLE`` seconds of silence (etcd3gw's own watch blocks
  forever on a paused or dead member and drops a server cancel without a word).

Not guaranteed: a call retried on another endpoint after a timeout may already have been
applied by the first one. Callers make such writes recognisable (the lease compares the key's
etcd lease, a slot claim carries a claim id); a grant retried so can leave an unused etcd lease
behind, which the cluster drops after its TTL. Reads are linearizable (etcd's default).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, unquote

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception, InternalServerError

from ...errors import ConfigurationError, LeaseError
from ...timing import jittered

log = logging.getLogger("singleton_tasks.etcd")

DEFAULT_PORT = 2379
#: A watch that heard nothing for this long is reopened: a paused member sends nothing, ever.
WATCH_IDLE = 5.0
#: The mean pause before a watch is reopened after a failure (never a busy loop).
WATCH_PAUSE = 0.5

# gRPC codes in the gateway's error bodies: Canceled, Unknown, DeadlineExceeded,
# ResourceExhausted, Internal, Unavailable. Another member may well answer.
_TRANSIENT_CODES = {1, 2, 4, 8, 13, 14}
_TOKEN_ERRORS = ("invalid auth token", "revision of auth store is old")
_DENIED_ERRORS = ("permission denied", "user name is empty", "authentication failed", "user name not found",
                  "role name not found")


class EtcdDenied(LeaseError):
    """The cluster refuses these credentials or this user's permissions: fix access, not transient."""


class EtcdNotFound(LeaseError):
    """The etcd lease a request named is gone (expired or revoked)."""


# -- configuration ---------------------------------------------------------------------------

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


# -- requests and answers ----------------------------------------------------------------------

def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with ``prefix`` (its last byte plus one)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # our prefixes end in a printable character, never 0xff
    return b64(bytes(raw))


def compare_create(key: str, revision: int) -> dict[str, Any]:
    """True when ``key``'s create revision is ``revision`` (0: the key does not exist)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def compare_mod(key: str, revision: int) -> dict[str, Any]:
    """True when ``key`` was last written at ``revision`` (0: the key does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def compare_lease(key: str, lease: int) -> dict[str, Any]:
    """True when ``key`` is attached to the etcd lease ``lease``."""
    return {"key": b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


def put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


@dataclass(frozen=True)
class KV:
    """One key as etcd returns it, int64 fields parsed (absent means 0 in proto3 JSON)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> "KV":
        return cls(base64.b64decode(raw.get("key", "")).decode(errors="replace"),
                   base64.b64decode(raw.get("value", "")), int(raw.get("create_revision", 0)),
                   int(raw.get("mod_revision", 0)), int(raw.get("lease", 0)))


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  #: the store's revision after the Txn: a put's revision when it wrote
    responses: list[Any]

    def kv(self, index: int) -> KV | None:
        """The key read by the ``get`` at ``index`` of the branch that ran, None if absent."""
        kvs = self.responses[index].get("response_range", {}).get("kvs", [])
        return KV.parse(kvs[0]) if kvs else None


def describe(exc: BaseException) -> str:
    """An error's own text, short: etcd's message, or the socket's (etcd3gw's str() is often empty)."""
    text = (exc.detail_text or "") if isinstance(exc, Etcd3Exception) else str(exc)
    try:
        body = json.loads(text)
        if isinstance(body, dict) and (body.get("message") or body.get("error")):
            return str(body.get("message") or body.get("error"))
    except ValueError:
        pass
    # requests' own text buries the cause: "HTTPConnectionPool(...): Max retries exceeded ...".
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    if "timed out" in text.lower():
        return "timed out"
    return (text or str(exc) or type(exc).__name__)[:200]


def _kind(exc: Etcd3Exception) -> str:
    """How a failed request is handled: 'down' (try another endpoint), 'token', 'denied', 'gone', 'other'."""
    if isinstance(exc, (ConnectionFailedError, ConnectionTimeoutError, InternalServerError)):
        return "down"
    text = describe(exc).lower()
    try:
        body = json.loads(exc.detail_text or "")
        code = int(body.get("code", body.get("grpc_code", -1)))  # "grpc_code" in a stream's error
    except (ValueError, AttributeError, TypeError):
        code = -1
    if any(e in text for e in _TOKEN_ERRORS):
        return "token"
    if code == 7 or code == 16 or any(e in text for e in _DENIED_ERRORS):
        return "denied"
    if code == 5 or "lease not found" in text:
        return "gone"
    return "down" if code in _TRANSIENT_CODES else "other"


class _Down(Exception):
    """An endpoint failed to answer (internal: the call moves on to the next endpoint)."""


# -- the client --------------------------------------------------------------------------------

class EtcdClient:
    """Calls to one etcd cluster with endpoint rotation, timeouts and authentication; thread-safe."""

    def __init__(self, config: EtcdConfig, timeout: float = 1.0) -> None:
        self.config = config
        self.timeout = timeout
        self.labels = config.labels
        self.session = requests.Session()
        # Never $REQUESTS_CA_BUNDLE or $https_proxy: the URL alone says how to reach the cluster.
        self.session.trust_env = False
        if config.ca:
            self.session.verify = config.ca
        if config.cert and config.key:
            self.session.cert = (config.cert, config.key)
        protocol = "https" if config.tls else "http"
        # api_path fixed: etcd3gw would otherwise ask /version first (one more round trip).
        self._members = [Etcd3Client(host=host, port=port, protocol=protocol, timeout=timeout,
                                     api_path="/v3/", session=self.session)
                         for host, port in config.endpoints]
        self._current = 0
        self._token: str | None = None
        self._auth_lock = threading.Lock()
        self._failing: dict[int, str] = {}  # endpoint -> its error, logged when it began
        self._state_lock = threading.Lock()

    @property
    def current(self) -> int:
        """The endpoint the next call goes to first."""
        return self._current

    def post(self, op: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/path`` with rotation (see the module docstring); the answer."""
        start, count = self._current, len(self._members)
        failed: list[str] = []
        for step in range(count):
            index = (start + step) % count
            try:
                answer = self._post_at(index, op, path, body)
            except _Down as exc:
                failed.append(f"{self.labels[index]}: {exc}")
                self._note(index, f"{op}: {exc}")
                continue
            self._note(index, None)
            if index != start:
                self._current = index
                log.info("etcd: now using endpoint %s", self.labels[index])
            return answer
        raise LeaseError(f"etcd: no endpoint reachable ({op}): " + "; ".join(failed))

    def url(self, index: int, path: str) -> str:
        """The URL of ``/v3/path`` at endpoint ``index``."""
        return self._members[index].get_url(path)

    # -- the operations ----------------------------------------------------------------------

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new etcd lease of ``ttl`` s: ``(id, ttl granted)`` (etcd may raise a short TTL)."""
        answer = self.post("grant", "lease/grant", {"TTL": str(ttl), "ID": "0"})
        return int(answer["ID"]), int(answer["TTL"])

    def keepalive(self, lease: int) -> int:
        """Refresh an etcd lease once: its TTL, or -1 when it is gone."""
        answer = self.post("keepalive", "lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", -1))

    def time_to_live(self, lease: int) -> int:
        """Seconds an etcd lease has left, -1 when it is gone."""
        return int(self.post("timetolive", "lease/timetolive", {"ID": str(lease)}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """Drop an etcd lease and delete its keys; one already gone is fine."""
        try:
            self.post("revoke", "lease/revoke", {"ID": str(lease)})
        except EtcdNotFound:
            pass

    def leases(self) -> list[int]:
        """Every etcd lease the cluster holds (for tests and operators)."""
        return [int(item["ID"]) for item in self.post("leases", "lease/leases", {}).get("leases", [])]

    def txn(self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]],
            failure: Sequence[dict[str, Any]] = ()) -> TxnResult:
        answer = self.post("txn", "kv/txn", {"compare": list(compare), "success": list(success),
                                             "failure": list(failure)})
        # proto3 JSON leaves out false and empty fields: "succeeded" is absent when false.
        return TxnResult(bool(answer.get("succeeded", False)), int(answer["header"]["revision"]),
                         answer.get("responses", []))

    def range(self, key: str) -> tuple[KV | None, int]:
        """``key`` (None when absent) and the store's revision when it was read."""
        answer = self.post("range", "kv/range", {"key": b64(key)})
        kvs = answer.get("kvs", [])
        return (KV.parse(kvs[0]) if kvs else None), int(answer["header"]["revision"])

    def range_prefix(self, prefix: str) -> list[KV]:
        answer = self.post("range", "kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        return [KV.parse(raw) for raw in answer.get("kvs", [])]

    def delete_prefix(self, prefix: str) -> None:
        self.post("delete", "kv/deleterange", {"key": b64(prefix), "range_end": prefix_end(prefix)})

    def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status`` of the endpoint that answered (version, leader, raft term)."""
        return self.post("status", "maintenance/status", {})

    def member_count(self) -> int:
        return len(self.post("members", "cluster/member/list", {}).get("members", []))

    def watch_deletes(self, key: str, on_delete: Callable[[], None], start_revision: int | None = None
                      ) -> Callable[[], None]:
        """Call ``on_delete`` from a background thread after each DELETE of ``key`` from
        ``start_revision`` on (default: from now); returns the function that stops it."""
        return KeyWatcher(self, key, on_delete, start_revision).start().stop

    def close(self) -> None:
        self.session.close()

    # -- internals ---------------------------------------------------------------------------

    def _post_at(self, index: int, op: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        member = self._members[index]
        for attempt in (1, 2):
            token = self.token_at(index)
            headers = {"Authorization": token} if token else {}
            try:
                answer = member.post(member.get_url(path), json=body, headers=headers)
                if not isinstance(answer, dict):
                    raise _Down(f"unexpected answer {answer!r:.80}")
                if "error" in answer and "result" not in answer:
                    # A streaming endpoint (keepalive) reports errors in a 200 answer.
                    raise Etcd3Exception(json.dumps(answer["error"]))
                return answer
            except Etcd3Exception as exc:
                kind = _kind(exc)
                if kind == "token" and attempt == 1 and self.config.user:
                    self.forget_token(token)  # expired (auth-token-ttl, 5 min idle by default): once more
                    continue
                text = f"{self.labels[index]}: {op}: {describe(exc)}"
                if kind == "down":
                    raise _Down(describe(exc)) from None
                if kind in ("denied", "token"):
                    raise EtcdDenied(text) from None
                if kind == "gone":
                    raise EtcdNotFound(text) from None
                raise LeaseError(text) from None
            except (requests.RequestException, ValueError) as exc:  # a broken or non-JSON answer
                raise _Down(describe(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def token_at(self, index: int) -> str | None:
        """The auth token (authenticating at endpoint ``index`` when there is none), or None."""
        if not self.config.user:
            return None
        with self._auth_lock:
            if self._token is None:
                self._token = self._authenticate(index)
            return self._token or None

    def forget_token(self, token: str | None) -> None:
        with self._auth_lock:
            if self._token == token:
                self._token = None

    def _authenticate(self, index: int) -> str:
        member = self._members[index]
        try:
            answer = member.post(member.get_url("auth/authenticate"),
                                 json={"name": self.config.user, "password": self.config.password})
            return str(answer["token"])
        except Etcd3Exception as exc:
            if "authentication is not enabled" in describe(exc):
                log.warning("etcd: credentials given, but authentication is not enabled on %s; going on without",
                            self.labels[index])
                return ""
            if _kind(exc) == "down":
                raise _Down(describe(exc)) from None
            raise EtcdDenied(f"{self.labels[index]}: authenticate as {self.config.user!r}: {describe(exc)}") from None
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise _Down(describe(exc)) from None

    def _note(self, index: int, problem: str | None) -> None:
        # One line when an endpoint starts failing and one when it answers again: an outage
        # is visible without one line per request.
        with self._state_lock:
            if problem is None:
                if self._failing.pop(index, None) is not None:
                    log.warning("etcd: endpoint %s answers again", self.labels[index])
            elif index not in self._failing:
                self._failing[index] = problem
                log.warning("etcd: endpoint %s failed (%s)", self.labels[index], problem)


class _Compacted(Exception):
    """The watch's start revision was compacted away: events may have been missed."""


class KeyWatcher:
    """A thread that calls ``on_delete`` after each DELETE event of ``key`` (a release or an expiry).

    Shape: ``while not stopped``: open a watch from the revision after the last event seen, read
    until it fails, is cancelled or stays silent ``WATCH_IDLE`` s, then open it again; a failure
    moves to the next endpoint and waits a jittered ``WATCH_PAUSE`` first, and so does any watch
    that ended sooner than that, so a member that accepts and drops connections cannot make it
    spin. After a compaction a delete may have been missed, so ``on_delete`` is called once:
    a spurious wake-up only makes a standby try. ``stop()`` cuts the open stream and joins.
    """

    def __init__(self, client: EtcdClient, key: str, on_delete: Callable[[], None],
                 start_revision: int | None = None) -> None:
        self.client = client
        self.key = key
        self.on_delete = on_delete
        self._start = start_revision
        self._stop = threading.Event()
        self._response: requests.Response | None = None
        self._response_lock = threading.Lock()
        self._problem: str | None = None
        self._endpoint: int | None = None  # its own rotation: a failed watch moves no lease's calls
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch-{key}", daemon=True)

    def start(self) -> "KeyWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            _cut(response)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self.client.timeout + 1)

    def _run(self) -> None:
        start = self._start
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                if start is None:
                    start = self.client.range(self.key)[1] + 1
                start = self._stream(start)
                failed = False
            except _Compacted:
                log.info("etcd: watch of %s: history compacted; waking the listener once", self.key)
                start, failed = None, False
                self._call()
            except Exception as exc:  # any failure: next endpoint, after a pause
                failed = True
                if not self._stop.is_set():
                    self._report(describe(exc))
                    index = self.client.current if self._endpoint is None else self._endpoint
                    self._endpoint = (index + 1) % len(self.client.labels)
            if self._stop.is_set():
                break
            if failed or time.monotonic() - began < WATCH_PAUSE:
                self._stop.wait(jittered(WATCH_PAUSE))

    def _stream(self, start: int) -> int:
        """Read one watch stream from revision ``start``; the revision to resume from."""
        index = self.client.current if self._endpoint is None else self._endpoint
        token = self.client.token_at(index)
        # hasleader: a member cut off from its leader cancels the watch instead of going silent.
        headers = {"Grpc-Metadata-hasleader": "true", **({"Authorization": token} if token else {})}
        body = {"create_request": {"key": b64(self.key), "start_revision": str(start)}}
        # The gateway answers with headers at once; a member that does not is treated like any
        # failed request. Only then may the stream stay quiet for WATCH_IDLE.
        response = self.client.session.post(self.client.url(index, "watch"), json=body, headers=headers, stream=True,
                                            timeout=self.client.timeout)
        with self._response_lock:
            self._response = response
        created, heard, pending = False, time.monotonic(), b""
        try:
            if self._stop.is_set():
                return start
            if response.status_code != 200:
                raise LeaseError(f"watch: HTTP {response.status_code} {response.text[:200]}")
            sock = _socket(response)
            if sock is not None:
                sock.settimeout(WATCH_IDLE)
            for chunk in response.iter_content(chunk_size=None):
                heard = time.monotonic()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        start, created = self._message(json.loads(line), start, created, token)
            return start  # the server ended the stream: open another one
        except requests.RequestException:
            if self._stop.is_set() or (created and time.monotonic() - heard >= WATCH_IDLE * 0.9):
                return start  # stopped, or merely quiet: reopen from the same revision
            raise
        finally:
            with self._response_lock:
                self._response = None
            response.close()

    def _message(self, message: dict[str, Any], start: int, created: bool, token: str | None) -> tuple[int, bool]:
        if "error" in message:
            raise LeaseError(f"watch: {message['error']}")
        result = message.get("result", {})
        if result.get("canceled"):
            if int(result.get("compact_revision", 0)):
                raise _Compacted()
            reason = str(result.get("cancel_reason", "cancelled by the server"))
            if any(e in reason for e in _TOKEN_ERRORS):
                self.client.forget_token(token)
            raise LeaseError(f"watch cancelled: {reason}")
        if result.get("created"):
            self._report(None)
            created = True
        for event in result.get("events", []):
            start = max(start, int(event["kv"].get("mod_revision", 0)) + 1)
            if event.get("type") == "DELETE":
                self._call()
        return start, created

    def _call(self) -> None:
        try:
            self.on_delete()
        except Exception:  # a raising listener must not end the watch
            log.exception("etcd: watch of %s: the listener raised; carrying on", self.key)

    def _report(self, problem: str | None) -> None:
        if problem is None:
            if self._problem is not None:
                log.info("etcd: watch of %s works again", self.key)
            self._problem = None
        elif self._problem is None:
            self._problem = problem
            log.warning("etcd: watch of %s failed (%s); retrying", self.key, problem)


def _socket(response: requests.Response) -> socket.socket | None:
    """The socket under a streaming response (urllib3 2 keeps its connection on the response)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _cut(response: requests.Response) -> None:
    """Shut the socket under a streaming response, so a read blocked in another thread returns
    (closing it alone does not wake the reader)."""
    sock = _socket(response)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        else:
            response.close()
    except OSError:
        pass  # already closed
