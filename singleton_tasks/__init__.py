"""singleton-tasks: run a Celery job on exactly one node, safely.

The public API, by layer (each layer uses only the ones above it):

* lease: ``Lease`` (a quorum lease over Redis with fencing tokens), ``LeaseProtocol``
* election: ``LeaderElector`` (campaign, lead, step down), ``LeaseKeeper`` (keep a held lease)
* fencing: ``FencedRecords``, ``claim_slot``, ``Claim``
* Celery: ``singleton_task``, ``SingletonTask``, ``LeaderScheduler``, ``lease_lost``,
  ``Settings``, ``settings_for``
* errors: ``SingletonError`` > ``ConfigurationError``, ``LeaseError`` > ``LeaseLost``,
  ``MalformedLeaseValue``, ``AccessDenied``; ``StaleToken``; ``TaskBusy``
"""

from .election import LeaderElector, LeaseKeeper
from .errors import (AccessDenied, ConfigurationError, LeaseError, LeaseLost, MalformedLeaseValue, SingletonError,
                     StaleToken, TaskBusy)
from .fence import Claim, FencedRecords, claim_slot
from .lease import Lease, LeaseProtocol

# The Celery layer is imported last: everything above works without a Celery app.
from .conf import Settings, settings_for  # noqa: E402
from .task import SingletonTask, lease_lost, singleton_task  # noqa: E402
from .beat import LeaderScheduler  # noqa: E402

__all__ = [
    # lease and election
    "Lease",
    "LeaseProtocol",
    "LeaderElector",
    "LeaseKeeper",
    # fencing
    "FencedRecords",
    "claim_slot",
    "Claim",
    # Celery
    "singleton_task",
    "SingletonTask",
    "LeaderScheduler",
    "lease_lost",
    "Settings",
    "settings_for",
    # errors
    "SingletonError",
    "ConfigurationError",
    "LeaseError",
    "LeaseLost",
    "MalformedLeaseValue",
    "AccessDenied",
    "StaleToken",
    "TaskBusy",
]
