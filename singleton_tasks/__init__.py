"""singleton-tasks: run a Celery job on exactly one node, safely.

The public API, by layer (each layer uses only the ones above it):

* the store: ``open_backend`` (by URL scheme), ``Backend`` and ``LeaseProtocol`` (the contract
  every store keeps), ``Lease`` (the Redis quorum lease with fencing tokens), ``Claim``,
  ``ClaimResult``
* election: ``LeaderElector`` (campaign, lead, step down), ``LeaseKeeper`` (keep a held lease)
* Celery: ``singleton_task``, ``SingletonTask``, ``LeaderScheduler`` (``LeaderMixin`` to compose
  by hand), ``Settings``,
  ``settings_for``; ``EntrySpec``, ``StoredEntries`` (beat entries changed at run time); signals
  ``lease_lost``, ``leader_elected``, ``leader_stepped_down``, ``run_skipped_busy``,
  ``slot_deduplicated``, ``node_failing``, ``node_recovered``
* errors: ``SingletonError`` > ``ConfigurationError``, ``LeaseError`` > ``LeaseLost``,
  ``MalformedLeaseValue``, ``AccessDenied``; ``InvalidEntry``; ``StaleToken``; ``TaskBusy``
"""

from .backend import Backend, Claim, ClaimResult, LeaseProtocol
from .backends import open_backend
from .backends.redis import Lease
from .election import LeaderElector, LeaseKeeper
from .errors import (AccessDenied, ConfigurationError, InvalidEntry, LeaseError, LeaseLost, MalformedLeaseValue,
                     SingletonError, StaleToken, TaskBusy)

# The Celery layer is imported last: everything above works without a Celery app.
from .conf import Settings, settings_for  # noqa: E402
from .task import SingletonTask, singleton_task  # noqa: E402
from .signals import (leader_elected, leader_stepped_down, lease_lost, node_failing, node_recovered,  # noqa: E402
                      run_skipped_busy, slot_deduplicated)
from .beat import LeaderMixin, LeaderScheduler  # noqa: E402
from .entries import EntrySpec, StoredEntries  # noqa: E402

__all__ = [
    # the store
    "open_backend",
    "Backend",
    "LeaseProtocol",
    "Lease",
    "Claim",
    "ClaimResult",
    # election
    "LeaderElector",
    "LeaseKeeper",
    # Celery
    "singleton_task",
    "SingletonTask",
    "LeaderScheduler",
    "LeaderMixin",
    "EntrySpec",
    "StoredEntries",
    "lease_lost",
    "leader_elected",
    "leader_stepped_down",
    "run_skipped_busy",
    "slot_deduplicated",
    "node_failing",
    "node_recovered",
    "Settings",
    "settings_for",
    # errors
    "SingletonError",
    "ConfigurationError",
    "LeaseError",
    "LeaseLost",
    "MalformedLeaseValue",
    "AccessDenied",
    "InvalidEntry",
    "StaleToken",
    "TaskBusy",
]
