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
* An endpoint that stops answering is logged and reported once (``events.NODE_FAILING``, its
  label as ``node``), and once again when it answers (``events.NODE_RECOVERED``). The event's
  ``name`` is the lease whose call saw the change (``acting_for``), else ``"etcd"``; one client
  serves every lease of a backend, so each change is reported once, not once per lease. A
  failed endpoint is tried again only when the rotation comes back to it (the endpoints after it
  failing too), so its recovery is reported then, not when it restarts.
* Requests and answers are read and written as ``wire`` says; ``watch_deletes`` is a
  ``watch.KeyWatcher``; ``config`` says where the cluster is.

Not guaranteed: a call retried on another endpoint after a timeout may already have been
applied by the first one. Callers make such writes recognisable (the lease compares the key's
etcd lease, a slot claim carries a claim id); a grant retried so can leave an unused etcd lease
behind, which the cluster drops after its TTL. Reads are linearizable (etcd's default).
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from ... import events
from ...errors import LeaseError
from .config import EtcdConfig
from .watch import KeyWatcher
from .wire import CLOSED_UNANSWERED, KV, TxnResult, b64, describe, error_kind, prefix_end

log = logging.getLogger("singleton_tasks.etcd")


class EtcdDenied(LeaseError):
    """The cluster refuses these credentials or this user's permissions: fix access, not transient."""


class EtcdNotFound(LeaseError):
    """The etcd lease a request named is gone (expired or revoked)."""


class _Down(Exception):
    """An endpoint failed to answer (internal: the call moves on to the next endpoint)."""


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
        self._acting = threading.local()  # .name: the lease this thread's calls are for

    @contextmanager
    def acting_for(self, name: str) -> Iterator[None]:
        """Calls of this thread inside the block are lease ``name``'s (the name of node events)."""
        before = getattr(self._acting, "name", None)
        self._acting.name = name
        try:
            yield
        finally:
            self._acting.name = before

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
        return self.lease_ttls(lease)[0]

    def lease_ttls(self, lease: int) -> tuple[int, int]:
        """An etcd lease's seconds left and the TTL it was granted with; ``(-1, -1)`` when it is gone."""
        answer = self.post("timetolive", "lease/timetolive", {"ID": str(lease)})
        left = int(answer.get("TTL", -1))
        return (left, int(answer.get("grantedTTL", -1))) if left >= 0 else (-1, -1)

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
                kind = error_kind(exc)
                if kind == "token" and attempt == 1 and self.config.user:
                    self.forget_token(token)  # expired (auth-token-ttl, 5 min idle by default): once more
                    continue
                text = f"{self.labels[index]}: {op}: {describe(exc)}"
                if kind == "down":
                    raise self._down(exc) from None
                if kind in ("denied", "token"):
                    raise EtcdDenied(text) from None
                if kind == "gone":
                    raise EtcdNotFound(text) from None
                raise LeaseError(text) from None
            except (requests.RequestException, ValueError) as exc:  # a broken or non-JSON answer
                raise self._down(exc) from None
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
            if error_kind(exc) == "down":
                raise self._down(exc) from None
            raise EtcdDenied(f"{self.labels[index]}: authenticate as {self.config.user!r}: {describe(exc)}") from None
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise self._down(exc) from None

    def _down(self, exc: BaseException) -> _Down:
        """``exc`` as an endpoint that did not answer, in words."""
        text = describe(exc)
        if text == CLOSED_UNANSWERED and not self.config.tls:
            # What a TLS-only etcd does to a plain HTTP request: no answer, not even an error.
            text += " (a TLS-only endpoint does that to plain HTTP: etcds://?)"
        return _Down(text)

    def _note(self, index: int, problem: str | None) -> None:
        # One line when an endpoint starts failing and one when it answers again: an outage
        # is visible without one line per request.
        label = self.labels[index]
        with self._state_lock:
            if problem is None:
                changed = self._failing.pop(index, None) is not None
            else:
                changed = index not in self._failing
                if changed:
                    self._failing[index] = problem
        if not changed:
            return
        name = getattr(self._acting, "name", None) or "etcd"
        if problem is None:
            log.warning("etcd: endpoint %s answers again", label)
            events.emit(events.NODE_RECOVERED, name=name, node=label)
        else:
            log.warning("etcd: endpoint %s failed (%s)", label, problem)
            events.emit(events.NODE_FAILING, name=name, node=label, error=problem)
