"""Settings of the example Django project. Every URL comes from the environment.

DATABASE_URL          the database: sqlite:///relative/path, sqlite:////absolute/path, or
                      postgresql://user:password@host:port/name[?sslmode=...] (default: SQLite
                      in db.sqlite3 beside this file). django-celery-beat keeps its periodic tasks
                      there; run ``python -m example_project.manage migrate`` first
DJANGO_ALLOWED_HOSTS  host names the web app answers, comma-separated (default 127.0.0.1,localhost)
CELERY_BROKER_URL     broker (default redis://127.0.0.1:6379/0)
SINGLETON_BACKEND_URL the lease store: Redis node URLs (one, or an odd number comma-separated),
                      or etcd://host:port,host:port (SINGLETON_REDIS_URL: the Redis form, as before)
                      (default: the broker's Redis)
SINGLETON_BEAT_SCHEDULER the scheduler the beat leader runs (default django-celery-beat's
                      DatabaseScheduler: the periodic tasks edited in the admin;
                      celery.beat:Scheduler runs CELERY_BEAT_SCHEDULE alone, without a database)
SINGLETON_LEASE_TTL   beat leader lease, seconds (default 5): a dead leader's replacement
                      starts dispatching about this long after the crash
SINGLETON_TASK_TTL    a running singleton task's lease, seconds (default 30)
SINGLETON_MISSED_RUNS coalesce (default), skip or catch_up
BILLING_API_URL       the fenced billing API (default http://127.0.0.1:8765)
BILLING_EVERY         seconds between scheduled charges (default 60)
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent


def database(url: str) -> dict:
    """Django's DATABASES["default"] for a DATABASE_URL (the dj-database-url spelling, SQLite and PostgreSQL only).

    ``sqlite:///db.sqlite3`` is relative to the working directory and ``sqlite:////srv/db.sqlite3``
    absolute (the path after the third slash); ``sqlite://`` alone is an in-memory database.
    Query parameters of a PostgreSQL URL become connection options (``?sslmode=require``).
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # Beat replicas and the web app share one SQLite file: wait for its lock, do not fail at once.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path[1:]) or ":memory:",
                "OPTIONS": {"timeout": 20}}
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": dict(parse_qsl(parts.query)),
        }
    raise ValueError(f"DATABASE_URL {parts.scheme}://...: only sqlite:// and postgresql:// are supported here")


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
INSTALLED_APPS = [
    # What the admin needs, and the admin itself: django-celery-beat's periodic tasks are edited there.
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "example_project.djangoproj.billing",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
ROOT_URLCONF = "example_project.djangoproj.urls"
STATIC_URL = "static/"
DATABASES = {"default": database(os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
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

# Run `celery beat` on as many hosts as you like: only the lease holder dispatches. The two
# settings that make django-celery-beat's schedules highly available: the leader runs its
# DatabaseScheduler (periodic tasks edited in the admin, and CELERY_BEAT_SCHEDULE below, which
# the leader writes into the same tables); standbys neither read nor write them.
CELERY_BEAT_SCHEDULER = "singleton"
CELERY_SINGLETON_BEAT_SCHEDULER = os.environ.get("SINGLETON_BEAT_SCHEDULER",
                                                 "django_celery_beat.schedulers:DatabaseScheduler")
CELERY_BEAT_SCHEDULE = {
    "charge-acme": {
        "task": "billing.charge",
        "schedule": float(os.environ.get("BILLING_EVERY", "60")),
        "args": ("acme", 100),
    },
}
