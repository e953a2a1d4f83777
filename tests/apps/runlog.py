"""How the database-scheduler test apps (``dbeatapp``, ``sqlabeatapp``) record a run.

Each run is pushed on the Redis list ``ran`` as ``name|slot|beat token|time`` (read by
``tests/db_beat.py``): the periodic task's name, the beat slot (``beat/NAME@MS``), the beat
leader's fencing token, and the worker's clock when the task ran.
"""

import time

import redis


def header(request, name):
    """A message header of the task's request, or the request attribute Celery copies it to ("" if none)."""
    return (request.headers or {}).get(name) or getattr(request, name, "")


class RunLog:
    """The list ``ran`` at one Redis URL."""

    def __init__(self, url):
        self.record = redis.Redis.from_url(url)

    def ran(self, request, name, slot):
        """Record one run of the periodic task ``name`` in ``slot``."""
        token = header(request, "singleton_token")
        self.record.rpush("ran", f"{name}|{slot}|{token}|{time.time():.3f}")
