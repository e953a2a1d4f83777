"""Who leads beat right now (``GET /``, as JSON), and the admin (``/admin/``), where
django-celery-beat's periodic tasks are edited."""

from django.contrib import admin
from django.http import JsonResponse
from django.urls import path

from singleton_tasks import settings_for
from singleton_tasks.keys import beat_lease_name

from .celery import app


def beat_leader(request):
    s = settings_for(app)
    backend = s.open_backend()
    name = beat_lease_name(s.beat_lease_name)
    try:
        return JsonResponse({"lease": name, "holder": backend.lease(name, s.lease_ttl).holder()})
    finally:
        backend.close()


urlpatterns = [path("", beat_leader), path("admin/", admin.site.urls)]
