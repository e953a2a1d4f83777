"""django-celery-beat under a beat leader: its ``DatabaseScheduler`` as one class path, and its
admin told which class the leader runs.

``CELERY_BEAT_SCHEDULER = "singleton"`` with ``CELERY_SINGLETON_BEAT_SCHEDULER =
"django_celery_beat.schedulers:DatabaseScheduler"`` makes beat highly available, but
django-celery-beat's periodic-task admin page imports ``CELERY_BEAT_SCHEDULER`` without Celery's
aliases: ``"singleton"`` fails there (HTTP 500). Either

* call ``register_admin()`` from an ``admin.py`` of the project: the page then warns only when
  the leader's class is not a ``DatabaseScheduler``; or
* set ``CELERY_BEAT_SCHEDULER = "singleton_tasks.django_beat:DatabaseScheduler"`` alone: the
  same leadership over the same class, a path the admin understands as it is.

Import this module only once Django is set up (Celery's Django fixup does so before beat starts).
"""

from __future__ import annotations

from typing import Any

from django_celery_beat.schedulers import DatabaseScheduler as _Host

from .beat import LeaderMixin
from .scheduler_hosts import compose

DatabaseScheduler = compose(LeaderMixin, _Host)


def register_admin(site: Any = None) -> None:
    """Put in place of django-celery-beat's periodic-task admin on ``site`` (default: the admin
    site) one that warns only when the beat leader runs no ``DatabaseScheduler``."""
    # Imported here: the admin needs django.contrib.admin installed, the scheduler does not.
    from celery import current_app
    from django.contrib import admin
    from django_celery_beat.admin import PeriodicTaskAdmin
    from django_celery_beat.models import PeriodicTask

    from .conf import settings_for
    from .scheduler_hosts import host_class

    class LeaderAwarePeriodicTaskAdmin(PeriodicTaskAdmin):  # type: ignore[misc]
        def changelist_view(self, request: Any, extra_context: dict[str, Any] | None = None) -> Any:
            leader_runs = host_class(settings_for(current_app._get_current_object()).beat_scheduler)
            extra_context = {**(extra_context or {}), "wrong_scheduler": not issubclass(leader_runs, _Host)}
            # ModelAdmin's view, not the host admin's: that one recomputes the warning from the alias.
            return admin.ModelAdmin.changelist_view(self, request, extra_context)

    site = site or admin.site
    if site.is_registered(PeriodicTask):
        site.unregister(PeriodicTask)
    site.register(PeriodicTask, LeaderAwarePeriodicTaskAdmin)


__all__ = ["DatabaseScheduler", "register_admin"]
