"""singleton-tasks: run a Celery job on exactly one node, safely.

The public API, by layer:

* the lease: ``Lease`` (quorum lease over Redis with fencing tokens), ``LeaseProtocol``
* election: ``LeaderElector``
* errors: ``SingletonError``, ``ConfigurationError``, ``LeaseError``, ``LeaseLost``,
  ``MalformedLeaseValue``, ``StaleToken``
"""

from .election import LeaderElector
from .errors import ConfigurationError, LeaseError, LeaseLost, MalformedLeaseValue, SingletonError, StaleToken
from .lease import Lease, LeaseProtocol

__all__ = [
    # lease and election
    "Lease",
    "LeaseProtocol",
    "LeaderElector",
    # errors
    "SingletonError",
    "ConfigurationError",
    "LeaseError",
    "LeaseLost",
    "MalformedLeaseValue",
    "StaleToken",
]
