"""What the benchmarks' Celery apps (``failoverapp``, ``idleapp``) read from the environment.

Each variable is named with the app's prefix (``FAILOVER_``, ``IDLE_``) and applied only when it
is set, so that an unset one leaves the tool's default:
``{prefix}STORE``: the Redis the scheduler's election uses (``singleton_backend_url`` for
singleton-tasks, ``redbeat_redis_url`` for RedBeat; single-beat reads ``SINGLE_BEAT_REDIS_SERVER``);
``{prefix}LEASE_TTL`` (``singleton_lease_ttl``), ``{prefix}REDBEAT_LOCK_TIMEOUT``
(``redbeat_lock_timeout``), ``{prefix}MAX_LOOP`` (``beat_max_loop_interval``).
"""

import os
from typing import Any


def configure_scheduler(app: Any, prefix: str) -> None:
    """Apply the ``{prefix}*`` scheduler settings that are set to ``app.conf``."""
    env = os.environ
    if env.get(f"{prefix}STORE"):
        app.conf.update(singleton_backend_url=env[f"{prefix}STORE"], redbeat_redis_url=env[f"{prefix}STORE"])
    if env.get(f"{prefix}LEASE_TTL"):
        app.conf.singleton_lease_ttl = float(env[f"{prefix}LEASE_TTL"])
    if env.get(f"{prefix}REDBEAT_LOCK_TIMEOUT"):
        app.conf.redbeat_lock_timeout = int(env[f"{prefix}REDBEAT_LOCK_TIMEOUT"])
    if env.get(f"{prefix}MAX_LOOP"):
        app.conf.beat_max_loop_interval = float(env[f"{prefix}MAX_LOOP"])
