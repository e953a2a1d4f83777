"""Child processes for the lease and election fault tests (waits and /proc reads: ``procs``).

Imported by ``test_lease_faults.py`` and ``test_election.py`` (pytest puts ``tests/`` on
``sys.path``). Run as a script it is the child process those tests start::

    python tests/fault_helpers.py MODE JSON_ARGS

and it speaks JSON lines on stdout (one object per line, each with ``pid`` and ``t``, the
child's ``time.monotonic()``; CLOCK_MONOTONIC is system-wide on Linux, so the parent can
compare it with its own). Modes:

``contender``  waits for ``go <until>`` on stdin, then loops acquire(blocking=False) /
               hold / release until ``until`` and appends one JSON line per validity
               window to ``out``; its 2nd window, and every ``outlive_every``-th after,
               it keeps without renewing until the validity is over.
``holder``     a lease driven over stdin: ``acquire``, ``state``, ``renew``, ``release``,
               ``quit``; one reply line per command.
``elector``    a ``LeaderElector`` that reports ``elected`` / ``lost`` and calls ``stop()``
               on SIGTERM (reported as ``sigterm`` then ``stopped``).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


# -- parent side -----------------------------------------------------------------------


def kill_node(node: Any) -> None:
    """SIGKILL a ``RedisNode`` and prove it is gone: its process died of it, its port refuses."""
    import pytest
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    proc = node.process
    assert proc is not None
    node.kill()
    assert proc.returncode == -signal.SIGKILL and not node.running
    probe = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                        retry=Retry(NoBackoff(), 0))  # redis-py's default would retry for seconds
    try:
        with pytest.raises(redis.ConnectionError):
            probe.ping()
    finally:
        probe.close()


class Child:
    """One child process running this file in ``mode``; its stdout lines arrive on a queue."""

    def __init__(self, mode: str, **args: Any) -> None:
        # Imported here: a child imports nothing before its mode starts (the elector blocks
        # SIGTERM before any import could start a thread).
        from singleton_tasks.testing import die_with_parent

        self.mode = mode
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), mode, json.dumps(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1, cwd=str(ROOT), preexec_fn=die_with_parent,
        )
        self.pid = self.proc.pid
        self.messages: "queue.Queue[dict[str, Any] | None]" = queue.Queue()
        self.history: list[dict[str, Any]] = []
        threading.Thread(target=self._read, name=f"child-reader-{self.pid}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                self.messages.put({"event": "garbage", "line": line})
        self.messages.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The next message whose items include ``match``; earlier ones go to ``history``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self.messages.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"{self.mode} child {self.pid}: no {match} within {timeout}s; "
                                     f"seen {self.history[-5:]}; stderr: {self.stderr()}") from None
            if msg is None:
                self.messages.put(None)  # keep reporting EOF
                raise AssertionError(f"{self.mode} child {self.pid} exited ({self.proc.poll()}) "
                                     f"before {match}; stderr: {self.stderr()}")
            self.history.append(msg)
            if all(msg.get(k) == v for k, v in match.items()):
                return msg

    def request(self, command: str, timeout: float = 15.0) -> dict[str, Any]:
        """Send a command to a ``holder`` child and return its reply."""
        self.send(command)
        return self.expect(timeout, reply=command)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL also ends a SIGSTOPped child
        self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._stderr.close()


class Children:
    """Children started by one test, all killed (by pid) when it ends."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    def spawn(self, mode: str, **args: Any) -> Child:
        child = Child(mode, **args)
        self.started.append(child)
        return child

    def close(self) -> None:
        for child in self.started:
            child.close()


# -- child side ------------------------------------------------------------------------

_say_lock = threading.Lock()


def say(**msg: Any) -> None:
    msg.setdefault("pid", os.getpid())
    msg.setdefault("t", time.monotonic())
    with _say_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def run_contender(a: dict[str, Any]) -> None:
    from singleton_tasks import Lease

    last_read = [0.0]

    def clock() -> float:  # the lease's clock, remembering its last reading
        last_read[0] = time.monotonic()
        return last_read[0]

    lease = Lease(a["name"], a["urls"], ttl=a["ttl"], clock=clock)
    rng = random.Random(a["seed"])
    say(event="ready")
    line = sys.stdin.readline().split()
    assert line and line[0] == "go", line
    until = float(line[1])
    windows = failed = 0
    with open(a["out"], "a") as out:
        while time.monotonic() < until:
            began = time.monotonic()
            if not lease.acquire(blocking=False):
                failed += 1
                time.sleep(rng.uniform(0.001, 0.015))
                continue
            start = time.monotonic()  # from here on this process believes it holds the lease
            token = lease.token
            # The lease's own deadline: valid_for() plus the instant it read its clock.
            valid = lease.valid_for()
            deadline = earliest = last_read[0] + valid
            if windows % a["outlive_every"] == 1:
                # Keep the lease past its validity without renewing: the window ends at the
                # deadline and the next holder must wait for the keys to expire in Redis.
                time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
                kind, end, held_at_end = "expired", deadline, lease.held
            else:
                time.sleep(rng.uniform(0.005, a["hold"]))
                now, held_at_end = time.monotonic(), lease.held
                kind, end = ("released", now) if now < deadline else ("expired", deadline)
            lease.release()
            out.write(json.dumps({"pid": os.getpid(), "began": began, "start": start, "end": end,
                                  "deadline": deadline, "earliest": earliest, "token": token, "kind": kind,
                                  "held_at_end": held_at_end}) + "\n")
            out.flush()
            windows += 1
            time.sleep(rng.uniform(0.0, 0.01))
    say(event="done", windows=windows, failed=failed)


def run_holder(a: dict[str, Any]) -> None:
    from singleton_tasks import Lease

    lease = Lease(a["name"], a["urls"], ttl=a["ttl"], op_timeout=a.get("op_timeout"))
    say(event="ready")
    while True:
        command = sys.stdin.readline().strip()
        if command in ("", "quit"):
            return
        if command == "acquire":
            ok = lease.acquire(blocking=False)
            before = time.monotonic()
            valid = lease.valid_for()  # so before + valid <= the lease's own deadline
            say(reply=command, ok=ok, token=lease.token, valid_for=valid, deadline_at_least=before + valid)
        elif command == "state":
            say(reply=command, held=lease.held, token=lease.token, valid_for=lease.valid_for())
        elif command == "renew":
            say(reply=command, ok=lease.renew(), held=lease.held)
        elif command == "release":
            lease.release()
            say(reply=command, held=lease.held)
        else:
            say(reply=command, error="unknown command")


def run_elector(a: dict[str, Any]) -> None:
    # Block SIGTERM before any thread exists (threads inherit the mask), then take it with
    # sigwait in the main thread: no handler races with the elector's threads.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    from singleton_tasks import LeaderElector, Lease

    lease = Lease(a["name"], a["urls"], ttl=a["ttl"])
    elector = LeaderElector(
        lease,
        on_elected=lambda: say(event="elected", token=lease.token),
        on_lost=lambda: say(event="lost"),
        renew_interval=a.get("renew_interval"),
        retry_interval=a.get("retry_interval"),
    )
    elector.start()
    say(event="started")
    signal.sigwait({signal.SIGTERM})
    began = time.monotonic()
    say(event="sigterm")
    elector.stop()
    say(event="stopped", took=time.monotonic() - began)


if __name__ == "__main__":
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    {"contender": run_contender, "holder": run_holder, "elector": run_elector}[mode](args)
