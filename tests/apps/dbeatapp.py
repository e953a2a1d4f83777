"""The Celery app of a Django project whose periodic tasks live in django-celery-beat's tables.

Tasks record each run in the Redis list ``ran`` at SINGLETON_TEST_LOG (``runlog.py``):
``name|slot|beat token|time`` (name: the periodic task's name, from django-celery-beat's header).
"""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbeat_settings")
django.setup()

from runlog import RunLog, header  # noqa: E402
from singleton_tasks import singleton_task  # noqa: E402

app = Celery("dbeatapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
runlog = RunLog(os.environ.get("SINGLETON_TEST_LOG", "redis://127.0.0.1:1/2"))


def _log(request, slot):
    runlog.ran(request, header(request, "periodic_task_name") or "?", slot)


@app.task(bind=True, name="dbeat.plain")
def plain(self, label=""):
    """Logged as NAME, or NAME#LABEL when the row's kwargs give a label (an edit shows)."""
    name = header(self.request, "periodic_task_name") or "?"
    runlog.ran(self.request, f"{name}#{label}" if label else name, header(self.request, "singleton_slot"))


@singleton_task(app=app, name="dbeat.single")
def single(self):
    _log(self.request, self.singleton.slot)


@singleton_task(app=app, name="dbeat.once")
def once(self):
    """The one-off entry's task: a singleton task runs each slot once, whatever beat resends."""
    _log(self.request, self.singleton.slot)
