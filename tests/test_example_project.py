"""The example Django project as a deployment runs it: its settings validate with the library's own
checker, ``manage.py check`` and ``migrate`` pass on SQLite, and the admin lists django-celery-beat's
periodic tasks (Django's test client, logged in as a superuser, in a subprocess with the
example's settings: Django reads its settings once per process).

``example_settings`` and ``celery_conf`` are also how ``test_compose`` reads the settings a
docker-compose service's environment gives: one home for "what the example reads".
"""

from __future__ import annotations

import os
import runpy
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import pytest
from celery import Celery
from celery.beat import Scheduler

from singleton_tasks.conf import Settings, read_settings
from singleton_tasks.scheduler_hosts import host_class

REPO = Path(__file__).resolve().parents[1]
SETTINGS_FILE = REPO / "example_project" / "djangoproj" / "settings.py"
SETTINGS_MODULE = "example_project.djangoproj.settings"
#: What the example reads from the environment; a subprocess gets none of the caller's.
OWN_VARIABLES = ("DJANGO_", "CELERY_", "SINGLETON_", "BILLING_", "DATABASE_URL")


def example_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The example's settings module as it reads ``env`` (and nothing else of this process's environment)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return runpy.run_path(str(SETTINGS_FILE))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def celery_conf(settings: Mapping[str, Any]) -> Any:
    """The Celery configuration those settings give, read as the project's celery.py does (namespace CELERY)."""
    app = Celery("example-settings", set_as_current=False)
    app.config_from_object(SimpleNamespace(**{k: v for k, v in settings.items() if k.isupper()}), namespace="CELERY")
    return app.conf


def singleton_settings(env: Mapping[str, str]) -> Settings:
    return read_settings(celery_conf(example_settings(env)))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    return {**env, "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "PYTHONUNBUFFERED": "1", **extra}


def manage(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "example_project.manage", *args], cwd=REPO, env=dict(env),
                          capture_output=True, text=True, timeout=180)


# -- settings ------------------------------------------------------------------------------


def test_settings_validate_and_lead_django_celery_beat_by_default() -> None:
    conf = celery_conf(example_settings({}))
    # The two settings (the class itself resolves in the Django process below: importing
    # django_celery_beat needs configured Django settings).
    assert conf.beat_scheduler == "singleton"
    s = read_settings(conf)
    assert s.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert s.backend_urls == ("redis://127.0.0.1:6379/0",), "the store defaults to the broker's Redis"
    assert (s.lease_ttl, s.task_ttl, s.missed_runs) == (5.0, 30.0, "coalesce")


def test_settings_follow_the_environment() -> None:
    s = singleton_settings({
        "SINGLETON_BACKEND_URL": "redis://a:6379/0,redis://b:6379/0,redis://c:6379/0",
        "SINGLETON_LEASE_TTL": "3", "SINGLETON_MISSED_RUNS": "skip",
        # The demo's path: the static CELERY_BEAT_SCHEDULE with Celery's own scheduler, no database.
        "SINGLETON_BEAT_SCHEDULER": "celery.beat:Scheduler",
    })
    assert s.backend_urls == ("redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0")
    assert (s.lease_ttl, s.missed_runs) == (3.0, "skip")
    assert host_class(s.beat_scheduler) is Scheduler
    assert singleton_settings({"SINGLETON_BACKEND_URL": "etcd://e1:2379,e2:2379"}).backend_urls == (
        "etcd://e1:2379,e2:2379",)


def test_database_url() -> None:
    settings = example_settings({})
    assert settings["DATABASES"]["default"]["NAME"] == str(SETTINGS_FILE.parent / "db.sqlite3")
    database = settings["database"]
    assert database("sqlite:////srv/data/db.sqlite3")["NAME"] == "/srv/data/db.sqlite3"
    assert database("sqlite:///db.sqlite3")["NAME"] == "db.sqlite3", "three slashes: relative, as dj-database-url"
    assert database("sqlite://")["NAME"] == ":memory:"
    pg = example_settings({"DATABASE_URL": "postgresql://app:p%40ss@db.internal:5433/billing?sslmode=require"})
    assert pg["DATABASES"]["default"] == {
        "ENGINE": "django.db.backends.postgresql", "NAME": "billing", "USER": "app", "PASSWORD": "p@ss",
        "HOST": "db.internal", "PORT": "5433", "OPTIONS": {"sslmode": "require"},
    }
    assert database("postgres://u@h/d")["ENGINE"] == "django.db.backends.postgresql"
    with pytest.raises(ValueError, match="mysql"):
        database("mysql://u@h/d")


# -- Django: check, migrate, the admin -----------------------------------------------------

ADMIN_SCRIPT = r"""
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from singleton_tasks import settings_for
from singleton_tasks.scheduler_hosts import host_class
from example_project.djangoproj.celery import app

print("leader-runs", host_class(settings_for(app).beat_scheduler).__name__)
setup_test_environment()  # the test client's host, "testserver", is allowed
listing = "/admin/django_celery_beat/periodictask/"
anonymous = Client().get(listing)
print("anonymous", anonymous.status_code, anonymous.get("Location", ""))
get_user_model().objects.create_superuser("admin", "admin@example.com", "a-long-password-1")
every, _ = IntervalSchedule.objects.get_or_create(every=10, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.create(name="charge-globex", task="billing.charge", interval=every, args='["globex", 5]')
client = Client()
assert client.login(username="admin", password="a-long-password-1")
index = client.get("/admin/")
print("index", index.status_code, listing in index.content.decode())
page = client.get(listing)
html = page.content.decode()
print("listing", page.status_code, "charge-globex" in html, "dispatched unless" in html)
"""


def test_check_migrate_and_the_admin_lists_periodic_tasks(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    env = clean_env(DATABASE_URL=f"sqlite:///{db}")
    checked = manage("check", "--fail-level", "WARNING", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    migrated = manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"django_celery_beat_periodictask", "auth_user", "django_session"} <= tables, tables

    done = subprocess.run([sys.executable, "-c", ADMIN_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["anonymous"].startswith("302 /admin/login/"), "the admin asks for a login: it is the real admin"
    assert lines["index"] == "200 True", "the admin index links django-celery-beat's periodic tasks"
    assert lines["leader-runs"] == "DatabaseScheduler"
    # django-celery-beat's own list view raises on the "singleton" alias (billing/admin.py says why).
    assert lines["listing"] == "200 True False", "the listing shows the row, without a wrong-scheduler warning"
