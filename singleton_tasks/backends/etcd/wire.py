"""The etcd JSON gateway's wire format: requests built, answers and errors read.

Guarantees: int64 fields travel as decimal strings both ways; keys and values are base64.
Values are whatever the caller stores (this library stores JSON): nothing read back is
unpickled. ``error_kind`` sorts every failed request into how the client handles it (another
endpoint, a new auth token, refused access, a gone etcd lease, or the cluster's answer).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception, InternalServerError

# gRPC codes in the gateway's error bodies: Canceled, Unknown, DeadlineExceeded,
# ResourceExhausted, Internal, Unavailable. Another member may well answer.
TRANSIENT_CODES = {1, 2, 4, 8, 13, 14}
#: An auth token the cluster no longer takes: get a new one and try once more.
TOKEN_ERRORS = ("invalid auth token", "revision of auth store is old")
#: Refused access: waiting does not help.
DENIED_ERRORS = ("permission denied", "user name is empty", "authentication failed", "user name not found",
                 "role name not found")
#: OpenSSL's reason for a failed handshake -> what to check in the URL. TLS failures count as
#: an endpoint that did not answer (another one may be configured right), never as a refusal.
TLS_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "check ca= and the names in the server's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the client certificate: check cert= and key=",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server wants a client certificate: give cert= and key=",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA of the client certificate",
    "WRONG_VERSION_NUMBER": "the endpoint does not speak TLS: etcd:// (plain HTTP)?",
    # A server that refuses the client certificate may just hang up instead of sending its alert.
    "EOF": "the server ended the handshake: does it want a client certificate? check cert= and key=",
}
#: etcd 3.5's gateway when it cannot open TLS to its own member's gRPC port (3.4 only says
#: "connection closed", too vague for a hint).
GATEWAY_TLS_FAILURE = "transport: authentication handshake failed"
GATEWAY_TLS_HINT = ("inside the member: its HTTP gateway presents --cert-file to its own gRPC port, so with "
                    "--client-cert-auth that certificate needs the clientAuth usage and a --trusted-ca-file signature")
#: ``describe``'s text for a server that closed the connection before any answer.
CLOSED_UNANSWERED = "the server closed the connection without answering"


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
    """An error's own text, short: etcd's message, the socket's or TLS's (etcd3gw's str() is often empty)."""
    text = (exc.detail_text or "") if isinstance(exc, Etcd3Exception) else str(exc)
    try:
        body = json.loads(text)
        if isinstance(body, dict) and (body.get("message") or body.get("error")):
            message = str(body.get("message") or body.get("error"))
            return message + (f" ({GATEWAY_TLS_HINT})" if GATEWAY_TLS_FAILURE in message else "")
    except ValueError:
        pass
    # requests' own text buries the cause: "HTTPConnectionPool(...): Max retries exceeded ...".
    tls = re.search(r"\[SSL: ([A-Z0-9_]+)\] (.+?)(?: \(_ssl\.c:\d+\)|['\"]\)|$)", text) or re.search(
        r"SSL(EOF)Error\(\d+, ['\"](.+?)(?: \(_ssl\.c:\d+\))?['\"]\)", text)
    if tls:
        hint = TLS_HINTS.get(tls.group(1))
        return f"TLS: {tls.group(2).strip()}" + (f" ({hint})" if hint else "")
    # A TLS-only port hangs up on plain HTTP: before any reply (RemoteDisconnected), or with a
    # reset when its close races the request (seen under load on 3.4 and 3.5).
    if "RemoteDisconnected" in text or "Connection reset by peer" in text:
        return CLOSED_UNANSWERED
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    if "timed out" in text.lower():
        return "timed out"
    return (text or str(exc) or type(exc).__name__)[:200]


def error_kind(exc: Etcd3Exception) -> str:
    """How a failed request is handled: 'down' (try another endpoint), 'token', 'denied', 'gone', 'other'."""
    if isinstance(exc, (ConnectionFailedError, ConnectionTimeoutError, InternalServerError)):
        return "down"
    text = describe(exc).lower()
    try:
        body = json.loads(exc.detail_text or "")
        code = int(body.get("code", body.get("grpc_code", -1)))  # "grpc_code" in a stream's error
    except (ValueError, AttributeError, TypeError):
        code = -1
    if any(e in text for e in TOKEN_ERRORS):
        return "token"
    if code == 7 or code == 16 or any(e in text for e in DENIED_ERRORS):
        return "denied"
    if code == 5 or "lease not found" in text:
        return "gone"
    return "down" if code in TRANSIENT_CODES else "other"

