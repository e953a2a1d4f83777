"""A Celery app for the process tests: broker and lease on the Redis named by the environment.

SINGLETON_TEST_BROKER: broker URL.  SINGLETON_TEST_NODES: the store (singleton_backend_url): Redis node URLs joined with commas, or an etcd:// URL.
SINGLETON_TEST_LOG: Redis URL where tasks record what ran.
Optional: SINGLETON_TEST_TTL (beat lease TTL, 2 s), SINGLETON_TEST_TASK_TTL (5 s),
SINGLETON_TEST_EVERY (the ``tick`` period, 1 s), SINGLETON_TEST_METRICS_PORT (metrics on
127.0.0.1, off by default).
"""

import os
import time

import redis
from celery import Celery

from singleton_tasks import singleton_task

app = Celery("beatapp")
app.conf.update(
    broker_url=os.environ["SINGLETON_TEST_BROKER"],
    singleton_backend_url=os.environ["SINGLETON_TEST_NODES"],
    singleton_lease_ttl=float(os.environ.get("SINGLETON_TEST_TTL", "2")),
    singleton_task_ttl=float(os.environ.get("SINGLETON_TEST_TASK_TTL", "5")),
    singleton_metrics_port=int(os.environ["SINGLETON_TEST_METRICS_PORT"]) if "SINGLETON_TEST_METRICS_PORT" in os.environ
    else None,
    singleton_metrics_addr="127.0.0.1",
    beat_schedule={
        "tick": {"task": "beatapp.tick", "schedule": float(os.environ.get("SINGLETON_TEST_EVERY", "1"))},
    },
    beat_max_loop_interval=1,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
record = redis.Redis.from_url(os.environ["SINGLETON_TEST_LOG"])


@singleton_task(app=app, name="beatapp.tick")
def tick(self):
    headers = self.request.headers or {}
    slot = self.singleton.slot
    beat_token = headers.get("singleton_token") or getattr(self.request, "singleton_token", None)
    record.rpush("ran", f"{slot}|{beat_token}|{self.singleton.token}|{os.getpid()}|{time.time():.3f}")


@singleton_task(app=app, name="beatapp.work", key=lambda job, seconds=1.0: job)
def work(self, job, seconds=1.0):
    record.rpush("started", f"{job}|{os.getpid()}|{time.monotonic():.6f}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        self.singleton.checkpoint()
        time.sleep(0.05)
    record.rpush("finished", f"{job}|{os.getpid()}|{time.monotonic():.6f}")


@app.task(bind=True, name="beatapp.note")
def note(self, label=""):
    """A plain task (no lease) for stored entries: records its label, slot and beat token."""
    headers = self.request.headers or {}
    slot = headers.get("singleton_slot") or getattr(self.request, "singleton_slot", "")
    token = headers.get("singleton_token") or getattr(self.request, "singleton_token", "")
    record.rpush("notes", f"{label}|{slot}|{token}|{time.time():.3f}")
