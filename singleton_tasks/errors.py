"""The exception hierarchy, split by what the caller does next.

``SingletonError``
    ``ConfigurationError`` - a setting or argument is wrong; fix the configuration.
    ``InvalidEntry`` - a beat entry to store (or one read back) is not valid; fix the entry.
    ``LeaseError`` - something about the shared lease; the caller may retry later.
        ``LeaseLost`` - the lease this code relied on is gone; stop the work now.
        ``MalformedLeaseValue`` - Redis holds a value this library did not write.
        ``AccessDenied`` - a node refuses us for good (credentials, permissions): fix access.
    ``StaleToken`` - a fenced write was refused because a newer token was seen.
    ``TaskBusy`` - another run of a singleton task holds its lease (``on_busy="raise"``).
"""

from __future__ import annotations


class SingletonError(Exception):
    """Root of every error raised by singleton-tasks."""


class ConfigurationError(SingletonError, ValueError):
    """A setting or argument has a bad value. The message names both."""

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"{setting}={value!r} is not valid: {allowed}")


class InvalidEntry(SingletonError, ValueError):
    """A stored beat entry has a bad field. The message names the entry, the field and the value."""

    def __init__(self, field: str, value: object, allowed: str, entry: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.entry = entry
        shown = repr(value)
        if len(shown) > 120:  # a hostile stored value is shown, shortened, never parsed further
            shown = shown[:117] + "..."
        where = f"entry {entry!r}: " if entry else ""
        super().__init__(f"{where}{field}={shown} is not valid: {allowed}")


class LeaseError(SingletonError):
    """A problem with a shared lease (not with the configuration)."""


class LeaseLost(LeaseError):
    """The lease is no longer held: its validity ran out or another holder took it.

    Code that sees this must not start any further work that needs the lease.
    """


class MalformedLeaseValue(LeaseError):
    """A key of ours holds a value this library never writes; it is reported, never run."""

    def __init__(self, key: str, value: object, node: str) -> None:
        self.key = key
        self.value = value
        self.node = node
        super().__init__(f"key {key!r} on {node} {foreign_value(key, value)}")


def foreign_value(key: str, value: object) -> str:
    """How a value this library never writes is reported: shortened, shown, never parsed further."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"holds a value not written by singleton-tasks: {shown}"


class AccessDenied(LeaseError):
    """Nodes refuse this client for good (a wrong password, a missing ACL permission).

    Raised instead of retrying forever when too few nodes are left to make a majority.
    """

    def __init__(self, lease: str, errors: str) -> None:
        self.lease = lease
        self.errors = errors
        super().__init__(f"lease {lease}: access denied, not retrying: {errors}")


class StaleToken(SingletonError):
    """A fenced write carried a token lower than one already accepted."""

    def __init__(self, token: int, highest: int) -> None:
        self.token = token
        self.highest = highest
        super().__init__(f"fencing token {token} is stale: {highest} was already accepted")


class TaskBusy(SingletonError):
    """Another run of the same singleton task holds the lease (``on_busy="raise"``)."""
