"""Singleton tasks: at most one run of a task (per key) at a time, across every worker.

Guarantees:

* The check happens when the task *executes*, so ``delay``, ``send_task``, beat, retries
  and redeliveries all go through it.
* While the body runs the lease is renewed in the background. ``self.singleton`` gives the
  body its fencing token, ``valid_for()``, ``checkpoint()`` and ``guard(budget)``; after the
  lease is lost, the next checkpoint or guard raises ``LeaseLost`` and the run ends quietly
  (acked, not retried by this node), logged and signalled through ``lease_lost``.
* The lease is released in every outcome (success, failure, retry, ``LeaseLost``), also
  when a prefork pool process is told to stop (``revoke(terminate=True)``, a hard time
  limit): billiard turns that signal into SystemExit in the body. After a SIGKILL the
  lease expires by its TTL.
* A beat slot (headers set by ``LeaderScheduler``) runs at most once, even if its message
  is delivered twice.

Not guaranteed: that the body stops by itself when the lease is lost. Stopping is
cooperative: call ``checkpoint()`` or use ``guard()`` before each call that must not be
made twice, and pass ``token`` to a resource that checks it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, Callable, Iterator

from celery import Task, _state
from celery.local import Proxy
from celery.exceptions import Ignore

from . import events, keys
from . import metrics as _metrics  # noqa: F401 - a worker serves metrics when the settings ask
from .signals import lease_lost
from .conf import ON_BUSY_POLICIES, SLOT_HEADER, Settings, settings_for
from .election import LeaseKeeper
from .errors import ConfigurationError, LeaseError, LeaseLost, SingletonError, TaskBusy
from .backend import SLOT_MEMORY, Backend, Claim, LeaseProtocol
from .backends import log_startup_warnings
from .timing import default_op_timeout

log = logging.getLogger("singleton_tasks.task")



class LeaseLostIgnore(LeaseLost, Ignore):  # type: ignore[misc]
    """``LeaseLost`` inside a task: Celery acks the message quietly and does not retry it."""


class SkippedRun(Ignore):  # type: ignore[misc]
    """The run was skipped (busy, or a beat slot that already ran): acked quietly."""


_backends: dict[tuple[int, Settings, float], Backend] = {}


def _backend_for(settings: Settings, timeout: float) -> Backend:
    # One connection set per process and timeout: pools must not cross a fork (prefork
    # pool), and a task with a short TTL must not wait as long as one with a long TTL.
    key = (os.getpid(), settings, timeout)
    if key not in _backends:
        _backends[key] = settings.open_backend(timeout)
        if not any(k[:2] == key[:2] for k in _backends if k != key):
            log_startup_warnings(_backends[key])  # once per process and store
    return _backends[key]


def close_backends() -> None:
    """Close every store connection this process opened for singleton tasks (tests use it)."""
    for backend in _backends.values():
        backend.close()
    _backends.clear()


class SingletonRun:
    """What a running singleton task may ask of its lease. One per run."""

    def __init__(self, task: Task, lease: LeaseProtocol, slot: str | None = None) -> None:
        self._task = task
        self._lease = lease
        self._slot = slot
        self._token = lease.token
        self._reported = threading.Lock()
        self._keeper = LeaseKeeper(lease, on_lost=self.report_lost)

    def start(self) -> "SingletonRun":
        """Begin renewing the lease in the background."""
        self._keeper.start()
        return self

    def finish(self) -> None:
        """Stop renewing (the caller releases the lease)."""
        self._keeper.stop()

    def report_lost(self) -> None:
        """Log and signal the loss, once per run, whoever noticed it first."""
        if self._reported.acquire(blocking=False):
            log.warning("%s: lease %s (token %s) lost while running", self._task.name, self._lease.name, self._token)
            lease_lost.send(sender=self._task, name=self._lease.name, token=self._token)
            events.emit(events.LEASE_LOST, name=self._lease.name, token=self._token)

    @property
    def name(self) -> str:
        return self._lease.name

    @property
    def slot(self) -> str | None:
        """The beat slot this run was sent for (``SCHEDULE/ENTRY@DUE_MS``), None when sent by hand."""
        return self._slot

    @property
    def token(self) -> int:
        """The fencing token of this run's grant; pass it to the resource you call."""
        token = self._lease.token
        if token is None:
            raise LeaseLostIgnore(f"lease {self._lease.name} is no longer held")
        return token

    def valid_for(self) -> float:
        """Seconds this run is still guaranteed to be the only one (no I/O)."""
        return 0.0 if self._keeper.lost.is_set() else self._lease.valid_for()

    def checkpoint(self) -> int:
        """Renew now and confirm the lease is still ours; returns the token or raises ``LeaseLost``.

        A renewal that fails only because nodes did not answer keeps the run going while the
        old validity lasts; ``guard()`` adds the check that enough of it is left.
        """
        renewed = not self._keeper.lost.is_set() and self._lease.renew()
        if not renewed and (self._keeper.lost.is_set() or not self._lease.held):
            raise LeaseLostIgnore(f"lease {self._lease.name} was lost")
        return self.token

    @contextlib.contextmanager
    def guard(self, budget: float) -> Iterator[int]:
        """Start a call only if the lease stays valid for at least ``budget`` seconds.

        Renews first; yields the token; raises ``LeaseLost`` instead of starting the call.
        """
        token = self.checkpoint()
        if self.valid_for() < budget:
            raise LeaseLostIgnore(
                f"lease {self._lease.name}: {self.valid_for():.3f}s left, less than the call's budget of {budget}s"
            )
        yield token


class SingletonTask(Task):  # type: ignore[misc]
    """Base class of singleton tasks; use with ``app.task(base=SingletonTask)`` or subclass.

    Class options: ``singleton_key`` (callable of the task's arguments, or None for one
    lease per task name), ``singleton_ttl``, ``singleton_on_busy`` (``skip``, ``retry``,
    ``raise``); unset ones come from the app's settings.
    """

    abstract = True
    singleton_key: Callable[..., Any] | None = None
    singleton_ttl: float | None = None
    singleton_on_busy: str | None = None

    @property
    def singleton(self) -> SingletonRun:
        """This run's lease handle (only inside the running body)."""
        run = getattr(self.request, "singleton", None)
        if run is None:
            raise SingletonError(f"{self.name}: self.singleton is only available while the task runs")
        return run  # type: ignore[no-any-return]

    def singleton_lease_name(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.singleton_key is None:
            return str(self.name)
        return f"{self.name}:{self.singleton_key(*args, **kwargs)}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        settings = settings_for(self.app)
        ttl = self.singleton_ttl or settings.task_ttl
        backend = _backend_for(settings, default_op_timeout(ttl))
        headers = self.request.headers or {}
        slot = headers.get(SLOT_HEADER) or getattr(self.request, SLOT_HEADER, None)
        name = keys.task_lease_name(self.singleton_lease_name(args, kwargs))
        lease = backend.lease(name, ttl)
        if not lease.acquire(blocking=False):
            unreachable = lease.unreachable
            if unreachable:  # not busy: the nodes failed, so say so instead of skipping quietly
                log.warning("%s: not run: lease %s could not be taken: %s", self.name, name, unreachable)
                raise LeaseError(f"{self.name}: lease {name} could not be taken: {unreachable}")
            # A busy beat slot is skipped, never retried: the holder may be this very slot
            # (a duplicate delivery), and a retry would count as a new attempt below.
            policy = "skip" if slot else self.singleton_on_busy or settings.on_busy
            return self._busy(lease, policy, settings.busy_retry_countdown)
        if slot:
            self._claim_slot(lease, backend, str(slot), settings.slot_memory)
        run = self.request.singleton = SingletonRun(self, lease, str(slot) if slot else None).start()
        try:
            return super().__call__(*args, **kwargs)
        except LeaseLost as exc:
            run.report_lost()
            if not isinstance(exc, Ignore):
                raise LeaseLostIgnore(str(exc)) from exc
            raise
        finally:
            run.finish()
            lease.release()
            self.request.singleton = None

    def _claim_slot(self, lease: LeaseProtocol, backend: Backend, slot: str, memory: float) -> None:
        """Claim ``slot`` for this attempt under the lease, or release it and skip the run.

        A retry the body asked for (a later attempt) may claim again; a duplicate delivery
        of an attempt already claimed may not.
        """
        parsed = keys.parse_slot(slot)
        if parsed is None:
            log.warning("%s: header %s=%r is not a slot id; running without slot deduplication",
                        self.name, SLOT_HEADER, slot)
            return
        entry, due_ms = parsed
        claim = backend.claim_slot(lease, entry, due_ms, int(self.request.retries or 0), memory)
        if claim.outcome is Claim.CLAIMED:
            return
        lease.release()
        events.emit(events.SLOT_DEDUPLICATED, name=lease.name, task=self.name, slot=slot, outcome=claim.outcome.value)
        if claim.outcome is Claim.ALREADY_RAN:
            log.info("%s: beat slot %s already ran; this delivery is skipped", self.name, slot)
        elif claim.outcome is Claim.TOO_OLD:
            log.warning("%s: beat slot %s NOT run: it is older than the last %d slots of its entry, so it cannot "
                        "be told apart from one that ran", self.name, slot, SLOT_MEMORY)
        else:
            log.warning("%s: beat slot %s NOT run: its claim reached no majority (%s); skipped so that it "
                        "cannot run twice", self.name, slot, claim.detail)
        raise SkippedRun(f"slot {slot}: {claim.outcome.value}")

    def _busy(self, lease: LeaseProtocol, policy: str, countdown: float) -> Any:
        log.info("%s: lease %s is busy (%s)", self.name, lease.name, policy)
        events.emit(events.BUSY, name=lease.name, task=self.name, policy=policy)
        if policy == "retry":
            raise self.retry(countdown=countdown)
        if policy == "raise":
            raise TaskBusy(f"{self.name}: another run holds lease {lease.name}")
        raise SkippedRun(f"lease {lease.name} is busy")


def _check_options(key: Any, ttl: Any, on_busy: Any) -> None:
    if key is not None and not callable(key):
        raise ConfigurationError("key", key, "a callable taking the task's arguments, or None")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0.5):
        raise ConfigurationError("ttl", ttl, "a number of seconds >= 0.5")
    if on_busy is not None and on_busy not in ON_BUSY_POLICIES:
        raise ConfigurationError("on_busy", on_busy, "one of " + ", ".join(map(repr, ON_BUSY_POLICIES)))


def singleton_task(
    fun: Callable[..., Any] | None = None,
    *,
    app: Any = None,
    key: Callable[..., Any] | None = None,
    ttl: float | None = None,
    on_busy: str | None = None,
    **options: Any,
) -> Any:
    """Declare a singleton task: ``@singleton_task`` or ``@singleton_task(app=app, key=..., ...)``.

    Without ``app`` it behaves like ``shared_task``. With ``app``, the task's base is
    ``SingletonTask`` combined with ``app.Task``, so a custom base (Flask's ``FlaskTask``)
    keeps working. The function is bound: its first argument is the task. Options are
    checked when the decorator is applied.
    """
    _check_options(key, ttl, on_busy)
    options.setdefault("bind", True)
    attrs = {"singleton_key": staticmethod(key) if key else None, "singleton_ttl": ttl, "singleton_on_busy": on_busy}

    def singleton_base(task_app: Any) -> Any:
        base = options.get("base") or task_app.Task
        if not issubclass(base, SingletonTask):
            base = type(f"Singleton{base.__name__}", (SingletonTask, base), {"abstract": True})
        return base

    def create(function: Callable[..., Any]) -> Any:
        if app is not None:
            return app.task(**{**options, "base": singleton_base(app)}, **attrs)(function)
        # shared_task semantics, but each app's own Task class (Flask's FlaskTask set as
        # task_cls, Django's DjangoTask) is kept under SingletonTask, as with app=.
        name = options.get("name")

        def bind(task_app: Any) -> Any:
            return task_app._task_from_fun(function, **{**options, "base": singleton_base(task_app)}, **attrs)

        _state.connect_on_app_finalize(bind)
        for task_app in _state._get_active_apps():
            if task_app.finalized:
                with task_app._finalize_mutex:
                    bind(task_app)

        def task_by_cons() -> Any:
            current = _state.get_current_app()
            return current.tasks[name or current.gen_task_name(function.__name__, function.__module__)]

        return Proxy(task_by_cons)

    return create(fun) if fun is not None else create
