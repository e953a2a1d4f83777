"""A Celery app whose periodic tasks live in sqlalchemy-celery-beat's tables (``test_sqlalchemy_beat``).

SINGLETON_TEST_DB: the SQLAlchemy database URL (``beat_dburi``).  SINGLETON_TEST_BROKER: broker URL.
SINGLETON_TEST_NODES: the store (singleton_backend_url).  SINGLETON_TEST_LOG: Redis URL where tasks
record each run in the list ``ran`` (``runlog.py``): ``name|slot|beat token|time`` (name: the
periodic task's name, read from the slot header ``beat/NAME@MS``: sqlalchemy-celery-beat passes ``periodic_task_name``
as a send option, which does not reach the task, where django-celery-beat puts it in the headers).
Optional: SINGLETON_TEST_TTL (beat lease TTL, 2 s).
"""

import os

from celery import Celery

from runlog import RunLog, header
from singleton_tasks import singleton_task

app = Celery("sqlabeatapp")
app.conf.update(
    # The settings that make sqlalchemy-celery-beat highly available (no -S needed):
    beat_scheduler="singleton",
    singleton_beat_scheduler="sqlalchemy_celery_beat.schedulers:DatabaseScheduler",
    beat_dburi=os.environ["SINGLETON_TEST_DB"],
    broker_url=os.environ["SINGLETON_TEST_BROKER"],
    singleton_backend_url=os.environ["SINGLETON_TEST_NODES"],
    singleton_lease_ttl=float(os.environ.get("SINGLETON_TEST_TTL", "2")),
    beat_max_loop_interval=1,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
runlog = RunLog(os.environ["SINGLETON_TEST_LOG"])


def _log(request, slot):
    runlog.ran(request, slot.partition("/")[2].rpartition("@")[0] or "?", slot)


@app.task(bind=True, name="sqlabeat.plain")
def plain(self):
    _log(self.request, header(self.request, "singleton_slot"))


@singleton_task(app=app, name="sqlabeat.single")
def single(self):
    _log(self.request, self.singleton.slot)
