"""Examples of singleton-tasks in projects already on Celery.

* ``api``: a tiny "third-party API" that enforces fencing tokens (and a client for it).
* ``djangoproj``: a Django project on Celery; its ``billing`` app has a singleton task that
  beat runs every few seconds from any number of ``celery beat`` replicas, whose leader runs
  django-celery-beat's DatabaseScheduler (periodic tasks edited in the admin, ``/admin/``).
  ``docker-compose.yml`` at the repository root deploys it.
* ``flaskapp``: a Flask app factory on Celery, the way Flask's docs set it up.
* ``demo``: ``python -m example_project.demo`` runs the Django project on embedded Redis,
  kills its beat leader and shows a stale ex-holder's call being rejected.

Run everything from the repository root (``example_project`` is not installed).
"""
