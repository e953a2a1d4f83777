"""The Celery app of ``bench_idle.py``: one trivial task every second, configured by the environment.

Every tool runs this same app; only the scheduler (``-S``) and its own settings differ.

IDLE_BROKER: the broker URL (no worker: the messages just queue).
IDLE_STORE: the Redis the scheduler's election uses: ``singleton_backend_url`` for
singleton-tasks, ``redbeat_redis_url`` for RedBeat (single-beat reads its own
``SINGLE_BEAT_REDIS_SERVER``; its wrapped beat uses the default scheduler and the broker alone).
Optional, each set only when given, so that an unset one leaves the tool's default:
IDLE_LEASE_TTL (``singleton_lease_ttl``), IDLE_REDBEAT_LOCK_TIMEOUT (``redbeat_lock_timeout``),
IDLE_MAX_LOOP (``beat_max_loop_interval``).
"""

import os

from celery import Celery

from benchapp import configure_scheduler

app = Celery("idleapp")
app.conf.update(
    broker_url=os.environ["IDLE_BROKER"],
    broker_connection_retry_on_startup=True,
    beat_schedule={"noop": {"task": "idleapp.noop", "schedule": 1.0}},
)
configure_scheduler(app, "IDLE_")


@app.task(name="idleapp.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Never run here (no worker): beat only sends it."""
