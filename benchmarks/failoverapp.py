"""The Celery app of ``bench_failover.py``: a task every second, and a worker that records each run.

Every tool runs this same app; only the scheduler (``-S``) and its own settings differ.

FAILOVER_BROKER: the broker URL (one solo worker per tool consumes it).
FAILOVER_STORE: the Redis the scheduler's election uses (``singleton_backend_url`` for
singleton-tasks, ``redbeat_redis_url`` for RedBeat; single-beat reads ``SINGLE_BEAT_REDIS_SERVER``).
FAILOVER_RECORD: a Redis URL; each run appends ``time.time()|origin|slot`` to the list ``ran``:
the worker's clock when the task started, the publisher's ``origin`` header (``gen<pid>@host``:
which beat process sent it) and singleton-tasks' ``singleton_slot`` header (empty for the others).
Optional, each set only when given: FAILOVER_LEASE_TTL (``singleton_lease_ttl``),
FAILOVER_REDBEAT_LOCK_TIMEOUT (``redbeat_lock_timeout``), FAILOVER_MAX_LOOP (``beat_max_loop_interval``).
"""

import os
import time
from typing import Any

import redis
from celery import Celery

from benchapp import configure_scheduler

app = Celery("failoverapp")
app.conf.update(
    broker_url=os.environ["FAILOVER_BROKER"],
    broker_connection_retry_on_startup=True,
    beat_schedule={"tick": {"task": "failoverapp.tick", "schedule": 1.0}},
    worker_prefetch_multiplier=1,
)
configure_scheduler(app, "FAILOVER_")

_record: "redis.Redis | None" = None


@app.task(name="failoverapp.tick", bind=True)  # type: ignore[untyped-decorator]
def tick(self: Any) -> None:
    """Record this run: when it started, which beat process sent it, its slot (ours only)."""
    global _record
    at = time.time()
    if _record is None:
        _record = redis.Redis.from_url(os.environ["FAILOVER_RECORD"])
    slot = (self.request.headers or {}).get("singleton_slot") or getattr(self.request, "singleton_slot", "") or ""
    _record.rpush("ran", f"{at:.6f}|{self.request.origin or ''}|{slot}")
