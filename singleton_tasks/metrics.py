"""Prometheus metrics (extra ``metrics``: prometheus-client), fed by the core's events.

``singleton_metrics_port`` set, a beat replica or a worker serves ``/metrics`` on it (bound to
``singleton_metrics_addr``, default ``0.0.0.0``). Metrics, each labelled by ``lease`` (the lease
name, e.g. ``beat:beat``):

* ``singleton_is_leader`` (gauge, 1 while this process leads), ``singleton_transitions_total``
  (counter by ``kind``: elected, stepped_down), ``singleton_lease_time_left_seconds`` (gauge,
  after each renewal), ``singleton_renew_seconds`` (histogram), ``singleton_renewals_total``
  (counter by ``result``: ok, failed);
* ``singleton_dispatches_total`` (beat sends), ``singleton_skips_total`` (by ``reason``: busy,
  already ran, too old, failed), ``singleton_stale_token_total`` (fenced writes refused),
  ``singleton_leases_lost_total`` (running tasks), ``singleton_node_errors_total`` (by ``node``,
  once per outage).

Without the setting nothing is imported or served, and events cost an empty-list check. Worker
metrics come from the worker's main process: with the prefork pool, task events happen in the
pool's children and are not collected (prometheus-client's multiprocess mode is not set up).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_init

from . import events
from .conf import settings_for

log = logging.getLogger("singleton_tasks.metrics")

_started: tuple[str, int] | None = None
_lock = threading.Lock()


def start_metrics(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve ``/metrics`` on ``addr:port`` from this process, once; True if this call started it."""
    global _started
    with _lock:
        if _started is not None:
            if _started != (addr, port):
                log.warning("metrics already served on %s:%d; not also on %s:%d", *_started, addr, port)
            return False
        import prometheus_client  # the ``metrics`` extra; conf checked it is installed

        observer = _observer(prometheus_client)
        prometheus_client.start_http_server(port, addr=addr)
        events.subscribe(observer)
        _started = (addr, port)
        log.info("singleton-tasks: metrics on http://%s:%d/metrics", addr, port)
        return True


def start_from_settings(settings: Any) -> None:
    """``start_metrics`` if the settings ask for it; a port in use is logged, never raised."""
    if settings.metrics_port is None:
        return
    try:
        start_metrics(settings.metrics_port, settings.metrics_addr)
    except OSError as exc:
        log.error("singleton-tasks: cannot serve metrics on %s:%d: %s", settings.metrics_addr,
                  settings.metrics_port, exc)


def _observer(prom: Any) -> events.Observer:
    is_leader = prom.Gauge("singleton_is_leader", "1 while this process leads the lease", ["lease"])
    transitions = prom.Counter("singleton_transitions_total", "Leadership changes", ["lease", "kind"])
    time_left = prom.Gauge("singleton_lease_time_left_seconds", "Validity left after the last renewal", ["lease"])
    renew_seconds = prom.Histogram("singleton_renew_seconds", "Time one renewal took", ["lease"])
    renewals = prom.Counter("singleton_renewals_total", "Renewals by result", ["lease", "result"])
    dispatches = prom.Counter("singleton_dispatches_total", "Beat slots sent", ["lease"])
    skips = prom.Counter("singleton_skips_total", "Runs not started", ["lease", "reason"])
    stale = prom.Counter("singleton_stale_token_total", "Fenced writes refused for a stale token", ["lease"])
    lost = prom.Counter("singleton_leases_lost_total", "Running tasks that lost their lease", ["lease"])
    node_errors = prom.Counter("singleton_node_errors_total", "Store nodes that started failing", ["lease", "node"])

    def observe(event: str, fields: dict[str, Any]) -> None:
        lease = str(fields.get("name"))
        if event == events.ELECTED:
            is_leader.labels(lease).set(1)
            transitions.labels(lease, "elected").inc()
        elif event == events.STEPPED_DOWN:
            is_leader.labels(lease).set(0)
            time_left.labels(lease).set(0)
            transitions.labels(lease, "stepped_down").inc()
        elif event == events.RENEWED:
            renew_seconds.labels(lease).observe(fields["seconds"])
            renewals.labels(lease, "ok" if fields["ok"] else "failed").inc()
            time_left.labels(lease).set(fields["valid_for"])
        elif event == events.DISPATCHED:
            dispatches.labels(lease).inc()
        elif event == events.BUSY:
            skips.labels(lease, "busy").inc()
        elif event == events.SLOT_DEDUPLICATED:
            skips.labels(lease, fields["outcome"]).inc()
        elif event == events.STALE_TOKEN:
            stale.labels(lease).inc()
        elif event == events.LEASE_LOST:
            lost.labels(lease).inc()
        elif event == events.NODE_FAILING:
            node_errors.labels(lease, str(fields.get("node"))).inc()

    return observe


@worker_init.connect  # type: ignore[untyped-decorator]
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    # In the worker's main process, once its app is configured.
    app = getattr(sender, "app", None)
    if app is not None:
        start_from_settings(settings_for(app))
