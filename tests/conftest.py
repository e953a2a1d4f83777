"""Fixtures: real redis-server processes (our plugin) and Celery's in-process fixtures.

pytest-celery is disabled with ``-p no:celery`` (pyproject): its Docker-based fixtures need
an engine CI lacks, and its ``celery_worker`` would shadow Celery's in-process one.
"""

pytest_plugins = ("singleton_tasks.pytest_plugin", "celery.contrib.pytest")
