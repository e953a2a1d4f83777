"""Django settings of the django-celery-beat process tests (``dbeatapp``).

SINGLETON_TEST_DB: ``sqlite:///PATH`` or ``postgresql://user@host:port/db``.
SINGLETON_TEST_DB_APP: the PostgreSQL application_name of this process (which replica wrote what).
The Celery settings are read by ``dbeatapp`` with namespace CELERY, as a Django project does.
"""

import os
from urllib.parse import urlsplit

SECRET_KEY = "singleton-tasks-tests"
INSTALLED_APPS = ["django_celery_beat"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

_db = urlsplit(os.environ["SINGLETON_TEST_DB"])
if _db.scheme == "sqlite":
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _db.path,
                             "OPTIONS": {"timeout": 20}}}
else:
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": _db.path.lstrip("/"), "USER": _db.username,
        "HOST": _db.hostname, "PORT": _db.port,
        "OPTIONS": {"application_name": os.environ.get("SINGLETON_TEST_DB_APP", "test")},
    }}

# The two settings that make django-celery-beat highly available, or the one class path that
# means the same (SINGLETON_TEST_ONE_CLASS=1):
if os.environ.get("SINGLETON_TEST_ONE_CLASS"):
    CELERY_BEAT_SCHEDULER = "singleton_tasks.django_beat:DatabaseScheduler"
else:
    CELERY_BEAT_SCHEDULER = "singleton"
    CELERY_SINGLETON_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

CELERY_BROKER_URL = os.environ.get("SINGLETON_TEST_BROKER", "memory://")
CELERY_SINGLETON_BACKEND_URL = os.environ.get("SINGLETON_TEST_NODES", "redis://127.0.0.1:1/0")
CELERY_SINGLETON_LEASE_TTL = float(os.environ.get("SINGLETON_TEST_TTL", "2"))
CELERY_BEAT_MAX_LOOP_INTERVAL = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
