"""A tiny "third-party API" that enforces fencing tokens, and a client for it.

The server stands in for the billing provider a singleton task calls. ``POST /charge`` with
``{"token": T, "account": A, "amount": N, ...}`` is accepted only if T is at least the
highest token it has accepted *for that account*; a lower token gets HTTP 409. Each account
is protected by its own lease (the task's lease is keyed by account), and tokens of
different leases cannot be compared, so the high-water mark is kept per account. Every
call, accepted or rejected, is recorded; ``GET /ledger`` returns the records as JSON.

Extra JSON fields of a call (``slot``, ``caller``, ...) are recorded with it, so a test or
the demo can tell which beat slot a charge belongs to.

Run it alone with ``python -m example_project.api --port 8765``: loopback only, unless
``--host 0.0.0.0`` (in a container, for the other containers; docker-compose.yml).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FencedAPI", "charge", "ledger", "APIError", "StaleTokenRejected"]


class FencedAPI:
    """The server: ``start()`` it, give clients ``url``, read ``ledger()``, ``stop()`` it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._highest: dict[str, int] = {}
        self._calls: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.api = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> "FencedAPI":
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fenced-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "FencedAPI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(self, call: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The rule itself, without HTTP: (status, reply). Records the call."""
        token, account, amount = call.get("token"), call.get("account"), call.get("amount")
        if isinstance(token, bool) or not isinstance(token, int):
            return 400, {"error": "token must be an integer"}
        if not isinstance(account, str) or not account:
            return 400, {"error": "account must be a non-empty string"}
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            return 400, {"error": "amount must be a number"}
        with self._lock:
            highest = self._highest.get(account)
            accepted = highest is None or token >= highest
            if accepted:
                self._highest[account] = token
            record = {
                **call,
                "seq": len(self._calls) + 1,
                "time": time.time(),
                "accepted": accepted,
                "highest_before": highest,
            }
            self._calls.append(record)
        if accepted:
            return 200, {"ok": True, "seq": record["seq"], "token": token}
        return 409, {"error": "stale fencing token", "token": token, "highest": highest, "seq": record["seq"]}

    def ledger(self) -> list[dict[str, Any]]:
        """Every call so far, in arrival order (copies)."""
        with self._lock:
            return [dict(c) for c in self._calls]

    def highest(self, account: str) -> int | None:
        with self._lock:
            return self._highest.get(account)


class _Handler(BaseHTTPRequestHandler):
    server_version = "FencedAPI/1"

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        if self.path != "/charge":
            return self._reply(404, {"error": f"no such endpoint: POST {self.path}"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            call = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            return self._reply(400, {"error": "body must be JSON"})
        if not isinstance(call, dict):
            return self._reply(400, {"error": "body must be a JSON object"})
        self._reply(*self.server.api.submit(call))  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/ledger":
            return self._reply(404, {"error": f"no such endpoint: GET {self.path}"})
        self._reply(200, {"calls": self.server.api.ledger()})  # type: ignore[attr-defined]

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep the demo's terminal quiet
        pass


# -- client ----------------------------------------------------------------------------


class APIError(Exception):
    """The API answered with an error other than a stale token (or did not answer)."""

    def __init__(self, status: int | None, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"fenced API error {status}: {body}")


class StaleTokenRejected(APIError):
    """HTTP 409: a newer holder has already called with a higher token. Stop; do not retry."""

    def __init__(self, token: int, highest: int | None, body: Any) -> None:
        self.token = token
        self.highest = highest
        APIError.__init__(self, 409, body)
        self.args = (f"token {token} rejected with HTTP 409: {highest} was already accepted",)


# Never route loopback calls through an http_proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(method: str, url: str, body: dict[str, Any] | None, timeout: float) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with _opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"{}")
        except ValueError:
            payload = {}
        if exc.code == 409 and body is not None:
            raise StaleTokenRejected(body["token"], payload.get("highest"), payload) from None
        raise APIError(exc.code, payload) from None
    except (urllib.error.URLError, OSError) as exc:
        raise APIError(None, str(exc)) from exc


def charge(url: str, token: int, account: str, amount: float, *, timeout: float = 5.0, **extra: Any) -> dict[str, Any]:
    """Charge ``account`` under fencing token ``token``. Raises ``StaleTokenRejected`` on 409."""
    result: dict[str, Any] = _request(
        "POST", url.rstrip("/") + "/charge", {"token": token, "account": account, "amount": amount, **extra}, timeout
    )
    return result


def ledger(url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every call the API has seen, accepted or not."""
    calls: list[dict[str, Any]] = _request("GET", url.rstrip("/") + "/ledger", None, timeout)["calls"]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    api = FencedAPI(host=args.host, port=args.port).start()
    print(f"fenced API on {api.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()


if __name__ == "__main__":
    main()
