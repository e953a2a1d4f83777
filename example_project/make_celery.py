"""The Celery entry point of the Flask example (Flask's docs call it ``make_celery.py``):
``celery -A example_project.make_celery worker``."""

from example_project.flaskapp import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
