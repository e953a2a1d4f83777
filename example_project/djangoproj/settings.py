"""Settings of the example Django project. Every URL comes from the environment.

CELERY_BROKER_URL     broker (default redis://127.0.0.1:6379/0)
SINGLETON_BACKEND_URL the lease store: Redis node URLs (one, or an odd number comma-separated),
                      or etcd://host:port,host:port (SINGLETON_REDIS_URL: the Redis form, as before)
                      (default: the broker's Redis)
SINGLETON_LEASE_TTL   beat leader lease, seconds (default 5): a dead leader's replacement
                      starts dispatching about this long after the crash
SINGLETON_TASK_TTL    a running singleton task's lease, seconds (default 30)
SINGLETON_MISSED_RUNS coalesce (default), skip or catch_up
BILLING_API_URL       the fenced billing API (default http://127.0.0.1:8765)
BILLING_EVERY         seconds between scheduled charges (default 60)
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["example_project.djangoproj.billing"]
ROOT_URLCONF = "example_project.djangoproj.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
TIME_ZONE = "UTC"

BILLING_API_URL = os.environ.get("BILLING_API_URL", "http://127.0.0.1:8765")

# -- Celery (read by celery.py with namespace="CELERY") ---------------------------------------

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = TIME_ZONE

# singleton-tasks: every CELERY_SINGLETON_* setting is singleton_* in app.conf.
# The store, chosen by URL scheme: Redis node URLs joined with commas, or an etcd:// URL.
CELERY_SINGLETON_BACKEND_URL = os.environ.get("SINGLETON_BACKEND_URL") or os.environ.get("SINGLETON_REDIS_URL") \
    or CELERY_BROKER_URL
CELERY_SINGLETON_LEASE_TTL = float(os.environ.get("SINGLETON_LEASE_TTL", "5"))
CELERY_SINGLETON_TASK_TTL = float(os.environ.get("SINGLETON_TASK_TTL", "30"))
CELERY_SINGLETON_MISSED_RUNS = os.environ.get("SINGLETON_MISSED_RUNS", "coalesce")

# Run `celery beat` on as many hosts as you like: only the lease holder dispatches.
CELERY_BEAT_SCHEDULER = "singleton"
CELERY_BEAT_SCHEDULE = {
    "charge-acme": {
        "task": "billing.charge",
        "schedule": float(os.environ.get("BILLING_EVERY", "60")),
        "args": ("acme", 100),
    },
}
