"""The Celery app of ``bench_scale.py``: SCALE_ENTRIES interval entries, no worker (messages queue).

SCALE_BROKER: the broker URL. SCALE_STORE: the scheduler's store (``singleton_backend_url`` for
singleton-tasks, ``redbeat_redis_url`` for RedBeat; Celery's PersistentScheduler needs none): a
``redis://`` URL, or for singleton-tasks (``bench_scale.py --etcd``) an ``etcd://`` one, which is
then given as ``singleton_backend_url`` alone.
SCALE_ENTRIES (E), SCALE_EVERY (the interval, s), SCALE_BASE (Unix time of the first due run),
SCALE_SPREAD (s): entry ``i`` is first due at ``SCALE_BASE + i * SCALE_SPREAD / E``, then every
SCALE_EVERY s. SPREAD 0 makes all E entries due at once (a burst); SPREAD = EVERY spreads them
evenly over each period. The phase is set the way every scheduler here understands: the entry's
``last_run_at`` (one period before its first due time), which Celery's ``ScheduleEntry``, RedBeat's
entries and singleton-tasks all take from the ``beat_schedule`` dict.

SCALE_LOG: a file; an ``after_task_publish`` handler (in the beat process) appends
``time.time() entry_index`` for every message once it is handed to the broker, one line-buffered
write per publish (a few microseconds against a publish's hundreds).
"""

import os
import time
from datetime import datetime, timezone
from typing import IO, Any

from celery import Celery
from celery.signals import after_task_publish

entries = int(os.environ.get("SCALE_ENTRIES", "1"))
every = float(os.environ.get("SCALE_EVERY", "60"))
base = float(os.environ.get("SCALE_BASE", str(time.time() + every)))
spread = float(os.environ.get("SCALE_SPREAD", "0"))

app = Celery("scaleapp")
app.conf.update(
    broker_url=os.environ["SCALE_BROKER"],
    broker_connection_retry_on_startup=True,
    beat_schedule={
        f"e{i:05d}": {
            "task": "scaleapp.noop",
            "schedule": every,
            "args": [i],
            "last_run_at": datetime.fromtimestamp(base + i * spread / entries - every, timezone.utc),
        }
        for i in range(entries)
    },
)
if os.environ.get("SCALE_STORE", "").startswith(("etcd://", "etcds://")):
    app.conf.update(singleton_backend_url=os.environ["SCALE_STORE"])
elif os.environ.get("SCALE_STORE"):
    app.conf.update(singleton_backend_url=os.environ["SCALE_STORE"], redbeat_redis_url=os.environ["SCALE_STORE"])

_log: "IO[str] | None" = None


@after_task_publish.connect  # type: ignore[untyped-decorator]
def _published(sender: Any = None, body: Any = None, **_: Any) -> None:
    global _log
    at = time.time()
    if _log is None:
        _log = open(os.environ["SCALE_LOG"], "a", buffering=1)
    try:
        args = body[0] if isinstance(body, (tuple, list)) else body.get("args")
        index = args[0]
    except (TypeError, IndexError, KeyError, AttributeError):
        index = -1
    _log.write(f"{at:.6f} {index}\n")


@app.task(name="scaleapp.noop")  # type: ignore[untyped-decorator]
def noop(i: int) -> None:
    """Never run here (no worker): beat only sends it."""
