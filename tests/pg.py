"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temp dir, a free loopback port,
stopped by PID.

Finds ``initdb`` and ``postgres`` on PATH or in Debian's ``/usr/lib/postgresql/*/bin``.
PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user (or ``nobody``).
Every data-modifying statement is logged with the client's ``application_name``
(``log_statement = mod``): what lets a test prove which replica wrote to the database.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from singleton_tasks.testing import die_with_parent, free_port, track, untrack

#: A logged statement: "<ms timestamp> [<application_name>] LOG:  statement: <sql>" (simple
#: protocol) or "... LOG:  execute <name>: <sql>" (extended protocol, as drivers send parameters).
STATEMENT = re.compile(r"^(\S+ \S+ \S+) \[([^\]]*)\] LOG:  (?:statement|execute [^:]*): (.*)$")


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _run_as() -> tuple[int, int] | None:
    """The (uid, gid) to drop to when running as root; None when not root."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(user)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user for PostgreSQL")


class PostgresServer:
    """One PostgreSQL server with a ``test`` database, reachable as user ``postgres`` without a password."""

    def __init__(self) -> None:
        initdb, postgres = find_binary("initdb"), find_binary("postgres")
        if not initdb or not postgres:
            raise FileNotFoundError("PostgreSQL's initdb and postgres are not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="singleton-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = free_port()
        ids = _run_as()
        if ids:
            os.chown(self.dir, *ids)

        def drop() -> None:
            die_with_parent()
            if ids:
                os.setgid(ids[1])
                os.setuid(ids[0])

        subprocess.run([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, preexec_fn=drop, cwd=self.dir)
        log = open(self.log_path, "wb")
        if ids:
            os.chown(self.log_path, *ids)
        self.proc = subprocess.Popen(
            [postgres, "-D", str(self.data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off", "-c", "log_statement=mod",
             "-c", "log_line_prefix=%m [%a] ", "-c", "log_timezone=UTC", "-c", "logging_collector=off"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=drop, cwd=self.dir, start_new_session=True,
        )
        log.close()
        track(self.proc)
        self._wait_ready()
        self.execute("postgres", "CREATE DATABASE test")

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "ready to accept connections" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def url(self, database: str = "test") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, database: str, sql: str) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def statements(self) -> list[tuple[float, str, str]]:
        """Every data-modifying statement logged so far: (Unix time, application_name, sql)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = STATEMENT.match(line)
            if match:
                at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=timezone.utc)
                out.append((at.timestamp(), match.group(2), match.group(3)))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        untrack(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
