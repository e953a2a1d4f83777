"""A Flask app factory on Celery, set up the way Flask's "Background Tasks with Celery" does it.

The Celery settings live in ``app.config["CELERY"]``; singleton-tasks reads its own
``singleton_*`` keys from the same dict. Tasks are Flask-aware through ``FlaskTask`` (each
run inside ``app.app_context()``), and ``@singleton_task(app=celery_app, ...)`` keeps that:
the task's base class is ``SingletonTask`` combined with the app's ``FlaskTask``.

Run it with::

    flask --app example_project.flaskapp run
    celery -A example_project.make_celery worker   # builds the Flask app, takes its Celery app

Any ``CELERY`` key can be set from the environment, e.g. ``FLASK_CELERY__broker_url=...``
or ``FLASK_CELERY__singleton_lease_ttl=3`` (Flask's ``from_prefixed_env``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from flask import Flask, current_app, has_app_context, request

from example_project import api
from singleton_tasks import LeaseLost, singleton_task


def celery_init_app(app: Flask) -> Celery:
    """Flask's recipe, unchanged: a Celery app whose tasks run inside the Flask app context."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def register_tasks(celery_app: Celery) -> dict[str, Any]:
    """The app's tasks, bound to its Celery app (so they get its FlaskTask base)."""

    # shared=False: bound to this Celery app only, so a second create_app() (tests, several
    # apps in one process) gets its own task with its own FlaskTask, not the first one's.
    @singleton_task(app=celery_app, name="flaskapp.charge_account", key=lambda account, *a, **kw: account,
                    shared=False)
    def charge_account(self: Any, account: str, amount: int) -> dict[str, Any]:
        # current_app works here only because FlaskTask runs this inside app.app_context().
        with self.singleton.guard(budget=1.0) as token:
            try:
                reply = api.charge(current_app.config["FENCED_API_URL"], token, account, amount, caller="flask")
            except api.StaleTokenRejected as exc:
                raise LeaseLost(str(exc)) from exc
        return {"app": current_app.name, "in_app_context": has_app_context(), "token": token, **reply}

    return {"charge_account": charge_account}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    app.config.from_mapping(
        FENCED_API_URL=os.environ.get("BILLING_API_URL", "http://127.0.0.1:8765"),
        CELERY=dict(
            broker_url=broker,
            result_backend=os.environ.get("CELERY_RESULT_BACKEND", broker),
            task_ignore_result=True,
            singleton_redis_url=os.environ.get("SINGLETON_REDIS_URL", broker),
            singleton_lease_ttl=5,
            singleton_task_ttl=30,
        ),
    )
    app.config.from_prefixed_env()
    if test_config:
        app.config.from_mapping(test_config)
    celery_app = celery_init_app(app)
    tasks = register_tasks(celery_app)

    @app.post("/charge/<account>")
    def start_charge(account: str) -> dict[str, Any]:
        amount = int(request.args.get("amount", "100"))
        result = tasks["charge_account"].delay(account, amount)
        return {"task_id": result.id}

    return app
