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

Without the setting nothing is imported or served, and events cost an empty-list check.

A worker with the prefork pool runs its tasks in pool children, so their events (busy skips,
leases lost, stale tokens, node errors) happen there. Such a worker's main process, at
``worker_init`` (before any child is forked), turns on prometheus-client's multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` is set to a temporary directory of its own (removed at
``worker_shutdown``), every process of the worker writes its samples there, and ``/metrics``
serves their sum (``MultiProcessCollector``). Gauges show the largest value among live processes
(``livemax``); a child that exits is marked dead (``worker_process_shutdown``). Other pools and
beat keep the plain in-process registry. A ``PROMETHEUS_MULTIPROC_DIR`` already set (by whoever
runs the worker) is used as it is and left in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from typing import Any

from celery.signals import worker_init, worker_process_shutdown, worker_shutdown

from . import events
from .conf import settings_for

log = logging.getLogger("singleton_tasks.metrics")

_started: tuple[str, int] | None = None
_lock = threading.Lock()
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The multiprocess directory this process made (and removes at worker shutdown), if any.
_own_dir: str | None = None
_owner_pid = 0


def start_metrics(port: int, addr: str = "0.0.0.0", multiprocess: bool = False) -> bool:
    """Serve ``/metrics`` on ``addr:port`` from this process, once; True if this call started it.

    ``multiprocess``: collect the samples of this process and of the processes it forks later
    (a prefork worker's pool), through prometheus-client's multiprocess mode (module docstring).
    """
    global _started
    with _lock:
        if _started is not None:
            if _started != (addr, port):
                log.warning("metrics already served on %s:%d; not also on %s:%d", *_started, addr, port)
            return False
        registry = _enable_multiprocess() if multiprocess else None
        import prometheus_client  # the ``metrics`` extra; conf checked it is installed

        observer = _observer(prometheus_client)
        if registry is None:
            prometheus_client.start_http_server(port, addr=addr)
        else:
            prometheus_client.start_http_server(port, addr=addr, registry=registry)
        events.subscribe(observer)
        _started = (addr, port)
        log.info("singleton-tasks: metrics on http://%s:%d/metrics", addr, port)
        return True


def _enable_multiprocess() -> Any:
    """Multiprocess mode for this process and its future children; the registry to serve."""
    global _own_dir, _owner_pid
    if not os.environ.get(MULTIPROC_ENV):
        _own_dir, _owner_pid = tempfile.mkdtemp(prefix="singleton-metrics-"), os.getpid()
        os.environ[MULTIPROC_ENV] = _own_dir  # inherited by the pool's children
    from prometheus_client import CollectorRegistry, multiprocess, values

    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client was imported before the directory was set: metrics made from now
        # on (ours) must still write to it.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def start_from_settings(settings: Any, multiprocess: bool = False) -> None:
    """``start_metrics`` if the settings ask for it; a port in use is logged, never raised."""
    if settings.metrics_port is None:
        return
    try:
        start_metrics(settings.metrics_port, settings.metrics_addr, multiprocess)
    except OSError as exc:
        log.error("singleton-tasks: cannot serve metrics on %s:%d: %s", settings.metrics_addr,
                  settings.metrics_port, exc)


def _observer(prom: Any) -> events.Observer:
    # multiprocess_mode only matters in multiprocess mode: the largest value of a live process.
    is_leader = prom.Gauge("singleton_is_leader", "1 while this process leads the lease", ["lease"],
                           multiprocess_mode="livemax")
    transitions = prom.Counter("singleton_transitions_total", "Leadership changes", ["lease", "kind"])
    time_left = prom.Gauge("singleton_lease_time_left_seconds", "Validity left after the last renewal", ["lease"],
                           multiprocess_mode="livemax")
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
        settings = settings_for(app)
        if settings.metrics_port is not None:
            start_from_settings(settings, multiprocess=_forks_children(sender))


def _forks_children(worker: Any) -> bool:
    """Whether ``worker`` (a WorkController at worker_init) runs its tasks in forked children."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    try:
        pool = get_implementation(getattr(worker, "pool_cls", None) or "prefork")
    except Exception:  # an alias Celery does not know: it will say so itself
        return False
    return isinstance(pool, type) and issubclass(pool, TaskPool)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    # In a pool child that ends: its live gauges no longer count.
    if _started is not None and os.environ.get(MULTIPROC_ENV) and "prometheus_client.multiprocess" in sys.modules:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _on_worker_shutdown(**_: Any) -> None:
    # In the worker's main process: the samples of a stopped worker must not reach the next one.
    global _own_dir
    if _own_dir is not None and os.getpid() == _owner_pid:
        shutil.rmtree(_own_dir, ignore_errors=True)
        _own_dir = None
