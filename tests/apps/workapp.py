"""A Celery app for the worker process tests (see test_task_workers.py).

SINGLETON_TEST_BROKER: broker URL.  SINGLETON_TEST_NODES: the store (singleton_backend_url): Redis node URLs joined with commas, or an etcd:// URL.
SINGLETON_TEST_LOG: Redis URL where tasks record what ran.
Optional: SINGLETON_TEST_METRICS_PORT (metrics on 127.0.0.1, off by default).
"""

import os
import time

import redis
from celery import Celery
from celery.signals import task_retry

from singleton_tasks import singleton_task

app = Celery("workapp")
app.conf.update(
    broker_url=os.environ["SINGLETON_TEST_BROKER"],
    singleton_backend_url=os.environ["SINGLETON_TEST_NODES"],
    singleton_task_ttl=float(os.environ.get("SINGLETON_TEST_TASK_TTL", "2")),
    singleton_busy_retry_countdown=0.1,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    singleton_metrics_port=int(os.environ["SINGLETON_TEST_METRICS_PORT"]) if "SINGLETON_TEST_METRICS_PORT" in os.environ
    else None,
    singleton_metrics_addr="127.0.0.1",
)
record = redis.Redis.from_url(os.environ["SINGLETON_TEST_LOG"])


@task_retry.connect
def count_retries(request=None, **_):
    record.incr("retries")


def keep_checking(task, seconds):
    """Busy for ``seconds``, checking the lease all along (``LeaseLost`` ends the run)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        task.singleton.checkpoint()
        time.sleep(0.02)


@singleton_task(app=app, name="workapp.work", key=lambda job, seconds=0: job, on_busy="retry", max_retries=None)
def work(self, job, seconds=0.3):
    record.rpush("started", f"{job}|{os.getpid()}|{time.monotonic():.6f}|{self.singleton.token}")
    keep_checking(self, seconds)
    record.rpush("finished", f"{job}|{os.getpid()}|{time.monotonic():.6f}")


@singleton_task(app=app, name="workapp.whoami", key=lambda pool, worker: worker)
def whoami(self, pool, worker):
    record.rpush("pools", f"{pool}|{self.singleton.token}|{self.singleton.name}")


@singleton_task(app=app, name="workapp.hold", ttl=30)
def hold(self, seconds=60):
    record.rpush("holding", f"{os.getpid()}|{self.singleton.token}")
    keep_checking(self, seconds)
    record.rpush("held", f"{os.getpid()}")
