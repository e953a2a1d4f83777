"""The Celery app of a Django project whose periodic tasks live in django-celery-beat's tables.

Tasks record each run in the Redis list ``ran`` at SINGLETON_TEST_LOG:
``name|slot|beat token|time`` (name: the periodic task's name, from django-celery-beat's header).
"""

import os
import time

import django
import redis
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbeat_settings")
django.setup()

from singleton_tasks import singleton_task  # noqa: E402

app = Celery("dbeatapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
record = redis.Redis.from_url(os.environ.get("SINGLETON_TEST_LOG", "redis://127.0.0.1:1/2"))


def _log(request, slot):
    headers = request.headers or {}
    name = headers.get("periodic_task_name") or getattr(request, "periodic_task_name", "?")
    token = headers.get("singleton_token") or getattr(request, "singleton_token", "")
    record.rpush("ran", f"{name}|{slot}|{token}|{time.time():.3f}")


@app.task(bind=True, name="dbeat.plain")
def plain(self):
    _log(self.request, (self.request.headers or {}).get("singleton_slot") or getattr(self.request, "singleton_slot", ""))


@singleton_task(app=app, name="dbeat.single")
def single(self):
    _log(self.request, self.singleton.slot)


@singleton_task(app=app, name="dbeat.once")
def once(self):
    """The one-off entry's task: a singleton task runs each slot once, whatever beat resends."""
    _log(self.request, self.singleton.slot)
