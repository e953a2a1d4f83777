"""The timing rules every lease and loop follows: one home for drift, deadlines and defaults.

Pure functions of their arguments, so a manual clock can test every decision without sleeping.
"""

from __future__ import annotations

import random

#: The shortest lease TTL accepted (s): below it, one network round trip is a large part of it.
MIN_TTL = 0.1


def clock_drift(ttl: float) -> float:
    """The margin kept against clock-rate differences between this process and the store."""
    return ttl * 0.01 + 0.002


def validity_deadline(started: float, ttl: float) -> float:
    """The monotonic instant a grant or renewal sent at ``started`` stops being valid."""
    return started + ttl - clock_drift(ttl)


def default_renew_interval(ttl: float) -> float:
    """Renew every third of the TTL: two renewals can fail before a holder must give up."""
    return ttl / 3


def default_retry_interval(ttl: float) -> float:
    """How often a standby tries: at most half a second, and at least four times per TTL."""
    return min(0.5, ttl / 4)


def default_op_timeout(ttl: float) -> float:
    """How long one network wait may take: a tenth of the TTL, between 50 ms and 1 s."""
    return min(1.0, max(0.05, ttl / 10))


def give_up_margin(ttl: float) -> float:
    """Validity left at which a holder that cannot renew gives the lease up (a third of the TTL)."""
    return ttl / 3


def jittered(interval: float) -> float:
    """``interval`` scaled by a random 50-100 %: contenders that failed together spread out."""
    return random.uniform(0.5, 1.0) * interval
