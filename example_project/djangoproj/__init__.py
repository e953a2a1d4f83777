"""A minimal Django project on Celery (the layout of Celery's "First steps with Django").

``celery -A example_project.djangoproj worker`` and ``celery -A example_project.djangoproj beat``
(the beat scheduler comes from ``CELERY_BEAT_SCHEDULER = "singleton"`` in the settings; the
leader runs ``CELERY_SINGLETON_BEAT_SCHEDULER``, django-celery-beat's DatabaseScheduler).
``python -m example_project.manage migrate`` creates its tables; the admin is at ``/admin/``.
"""

# Load the Celery app whenever Django starts, so that @shared_task uses it.
from .celery import app as celery_app

__all__ = ("celery_app",)
