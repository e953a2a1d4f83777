"""The project's Celery app: configured from Django settings, ``CELERY_`` prefix.

singleton-tasks needs nothing more here: it reads ``CELERY_SINGLETON_*`` through
``app.conf`` (as ``singleton_*``), and ``CELERY_BEAT_SCHEDULER = "singleton"`` selects its
beat scheduler.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.djangoproj.settings")

app = Celery("djangoproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
