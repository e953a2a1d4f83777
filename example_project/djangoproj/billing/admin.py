"""django-celery-beat's periodic-task admin, told which scheduler the beat leader runs (the
"singleton" alias alone makes its list view fail: see singleton_tasks.django_beat)."""

from singleton_tasks.django_beat import register_admin

register_admin()
