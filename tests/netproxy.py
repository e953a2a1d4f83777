"""A loopback TCP relay in front of one Redis node, to delay or cut its traffic (DESIGN §5).

``cut()`` is a network partition as TCP sees it: nothing crosses, but connections stay up
and what was sent is held, to be delivered in order when ``heal()`` is called, late. This
is what a real partition does to a command whose sender already gave up on it, so a test
can check that such late commands do no harm. ``delay(s)`` holds every chunk ``s`` seconds.
Counters say what was held and what crossed late, so a test can prove the fault fired.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque


class TcpProxy:
    """Relays ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``; ``close()`` ends every thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._delay = 0.0
        self._cut = False
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.held_chunks = 0  # chunks that arrived while cut
        self.late_chunks = 0  # chunks delivered after a heal, having been held by a cut
        self.open_upstreams = 0  # connections to the node that the node has not closed yet
        self._spawn(self._accept_loop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def delay(self, seconds: float) -> None:
        with self._cond:
            self._delay = seconds
            self._cond.notify_all()

    def cut(self) -> None:
        with self._cond:
            self._cut = True
            self._cond.notify_all()

    def heal(self) -> None:
        with self._cond:
            self._cut = False
            self._delay = 0.0
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        _close(self._listener)
        for sock in list(self._sockets):
            _close(sock)
        for thread in self._threads:
            thread.join(5)

    # -- relay -----------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            with self._cond:
                self.open_upstreams += 1
            for src, dst in ((client, upstream), (upstream, client)):
                pending: deque[tuple[float, bytes, bool]] = deque()
                self._spawn(self._read, src, pending, src is upstream)
                self._spawn(self._write, dst, pending)

    def _read(self, src: socket.socket, pending: deque[tuple[float, bytes, bool]], from_node: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with self._cond:
                held = self._cut
                self.held_chunks += held and bool(data)
                self.open_upstreams -= from_node and not data  # the node read all it was sent, then closed
                pending.append((time.monotonic(), data, held))  # b"": the sender closed its side
                self._cond.notify_all()
            if not data:
                return

    def _write(self, dst: socket.socket, pending: deque[tuple[float, bytes, bool]]) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    not pending or self._cut or time.monotonic() < pending[0][0] + self._delay
                ):
                    wait = pending[0][0] + self._delay - time.monotonic() if pending and not self._cut else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, data, held = pending.popleft()
                self.late_chunks += held and bool(data)
            try:
                if data:
                    dst.sendall(data)
                else:
                    dst.shutdown(socket.SHUT_WR)  # pass the close on, after everything before it
                    return
            except OSError:
                return


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv(); close() alone does not
    except OSError:
        pass
    sock.close()
