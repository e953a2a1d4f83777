"""One page: who leads beat right now (``GET /``), as JSON."""

from django.http import JsonResponse
from django.urls import path

from singleton_tasks import Lease, settings_for

from .celery import app


def beat_leader(request):
    s = settings_for(app)
    lease = Lease(s.beat_lease_name, list(s.redis_urls), ttl=s.lease_ttl, prefix=s.key_prefix)
    try:
        return JsonResponse({"lease": lease.key, "holder": lease.holder()})
    finally:
        lease.nodes.close()


urlpatterns = [path("", beat_leader)]
