"""Watching one key for deletes (a release or an expiry) and writes, through etcd's gateway, robustly.

Guarantees: ``KeyWatcher`` calls back on each DELETE of a key (and, when asked, each PUT),
restarting its watch after errors, after a server-side cancel and after ``WATCH_IDLE`` seconds
of silence (etcd3gw's own watch blocks forever on a paused or dead member and drops a server
cancel without a word). It never spins: a failed or short-lived watch waits a jittered
``WATCH_PAUSE`` before the next. A failing watch moves to another endpoint on its own, never
moving the client's other calls.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import requests

from ...errors import LeaseError
from ...timing import jittered
from .wire import KV, TOKEN_ERRORS, b64, describe

if TYPE_CHECKING:
    from .client import EtcdClient

log = logging.getLogger("singleton_tasks.etcd")

#: A watch that heard nothing for this long is reopened: a paused member sends nothing, ever.
WATCH_IDLE = 5.0
#: The mean pause before a watch is reopened after a failure (never a busy loop).
WATCH_PAUSE = 0.5


class _Compacted(Exception):
    """The watch's start revision was compacted away: events may have been missed."""


class KeyWatcher:
    """A thread that calls ``on_delete`` after each DELETE event of ``key`` (a release or an expiry)
    and ``on_put`` (if given) with the key as written after each PUT event.

    Shape: ``while not stopped``: open a watch from the revision after the last event seen, read
    until it fails, is cancelled or stays silent ``WATCH_IDLE`` s, then open it again; a failure
    moves to the next endpoint and waits a jittered ``WATCH_PAUSE`` first, and so does any watch
    that ended sooner than that, so a member that accepts and drops connections cannot make it
    spin. After a compaction a delete may have been missed, so ``on_delete`` is called once:
    a spurious wake-up only makes a standby try. ``stop()`` cuts the open stream and joins.
    Callbacks run in the watch's thread, one at a time, in the order of the events.
    """

    def __init__(self, client: EtcdClient, key: str, on_delete: Callable[[], None],
                 start_revision: int | None = None, on_put: Callable[[KV], None] | None = None) -> None:
        self.client = client
        self.key = key
        self.on_delete = on_delete
        self.on_put = on_put
        self._start = start_revision
        self._stop = threading.Event()
        self._response: requests.Response | None = None
        self._response_lock = threading.Lock()
        self._problem: str | None = None
        self._open = False  # a watch stream is created and has not failed since
        self._endpoint: int | None = None  # its own rotation: a failed watch moves no lease's calls
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch-{key}", daemon=True)

    @property
    def healthy(self) -> bool:
        """A stream is open (or being reopened from the last revision seen after a quiet spell):
        a delete from now on will be heard."""
        return self._open and not self._stop.is_set()

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
                self._call(self.on_delete)
            except Exception as exc:  # any failure: next endpoint, after a pause
                failed, self._open = True, False
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
            if any(e in reason for e in TOKEN_ERRORS):
                self.client.forget_token(token)
            raise LeaseError(f"watch cancelled: {reason}")
        if result.get("created"):
            self._report(None)
            created = self._open = True
        for event in result.get("events", []):
            start = max(start, int(event["kv"].get("mod_revision", 0)) + 1)
            if event.get("type") == "DELETE":
                self._call(self.on_delete)
            elif self.on_put is not None:  # proto3 JSON leaves the default type, PUT, out
                self._call(self.on_put, KV.parse(event["kv"]))
        return start, created

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
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
