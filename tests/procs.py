"""Real ``celery`` subprocesses for the failover tests: start, signal, inspect, always clean up.

Each process is started in its own session, so its process group id is its pid and
``os.killpg(pid, ...)`` reaches every process it forked (a ``worker -B`` forks its embedded
beat). Logs go to one file per process in a temporary directory. ``Procs.close()`` kills
every group still alive, resuming stopped ones first, and is safe to call more than once.
Nothing is ever killed by name: only the process groups started here, by id.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from singleton_tasks.testing import die_with_parent

T = TypeVar("T")

APPS = Path(__file__).resolve().parent / "apps"


class WaitTimeout(AssertionError):
    """A condition did not become true before its deadline."""


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str = "", interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises ``WaitTimeout`` (an ``AssertionError``) naming ``what`` after ``timeout`` seconds.
    The predicate is always called once more at the deadline, so a slow poll never loses
    a condition that became true meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on ("S", ppid, pgrp, ...); None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def proc_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T for stopped, Z...), or None if it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def is_dead(pid: int) -> bool:
    """Gone, or a zombie (an orphan waits for PID 1 to reap it; it runs no code)."""
    return proc_state(pid) in (None, "Z", "X")


class Proc:
    """One started process (and its process group) with its log file."""

    def __init__(self, name: str, args: list[str], popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.popen = popen
        self.log_path = log_path
        self.pid = popen.pid

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} rc={self.popen.poll()}>"

    @property
    def alive(self) -> bool:
        """Not exited (a stopped process is alive)."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def send(self, sig: int) -> None:
        """Signal the main process only."""
        os.kill(self.pid, sig)

    def send_group(self, sig: int) -> None:
        """Signal the whole process group (the main process and everything it forked).

        Also right after the main process exited: Linux does not reuse a pid while it still
        names a process group with members, so this reaches only what this process left.
        """
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def state(self) -> str | None:
        return proc_state(self.pid)

    def log(self, start: int = 0) -> str:
        """The log from byte offset ``start`` on."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_has(self, pattern: str, start: int = 0) -> bool:
        return re.search(pattern, self.log(start)) is not None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Procs:
    """The processes of one test, killed together by ``close()`` (the fixture's teardown)."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.started: list[Proc] = []

    def start(self, name: str, args: list[str]) -> Proc:
        log_path = self.dir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                args, cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )
        proc = Proc(name, args, popen, log_path)
        self.started.append(proc)
        return proc

    def celery(self, name: str, *args: str) -> Proc:
        return self.start(name, [sys.executable, "-m", "celery", "-A", "beatapp", *args])

    def beat(self, name: str, *extra: str) -> Proc:
        """``celery beat -S singleton`` with its own schedule file (unused by the scheduler)."""
        return self.celery(name, "beat", "-S", "singleton", "-s", str(self.dir / f"{name}.schedule"),
                           "-l", "info", *extra)

    def worker(self, name: str, *extra: str, pool: str = "solo") -> Proc:
        return self.celery(name, "worker", "-P", pool, "-n", f"{name}@localhost", "-l", "info",
                           "--without-gossip", "--without-mingle", "--without-heartbeat", *extra)

    def close(self) -> None:
        for proc in self.started:
            # SIGKILL ends a stopped process too; resuming first (harmless for the others)
            # makes sure nothing is left stopped if the kill does not reach it.
            proc.send_group(signal.SIGCONT)
            proc.send_group(signal.SIGKILL)
        for proc in self.started:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def report(self, lines: int = 40, procs: Iterable[Proc] | None = None) -> str:
        parts = []
        for proc in procs if procs is not None else self.started:
            parts.append(f"----- {proc.name} pid={proc.pid} rc={proc.returncode} log={proc.log_path} "
                         f"(last {lines} lines) -----")
            parts.append(proc.tail(lines))
        return "\n".join(parts)
