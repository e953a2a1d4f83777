# The example project's image (docker-compose.yml runs every Python service from it).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # example_project is not an installed package (pyproject installs singleton_tasks only):
    # `celery -A example_project.djangoproj` and `python -m example_project...` find it here.
    PYTHONPATH=/app

WORKDIR /app

# pyproject.toml names README.md as the readme: the install reads it.
COPY pyproject.toml README.md ./
COPY singleton_tasks ./singleton_tasks
COPY example_project ./example_project
# The example extra: Django, django-celery-beat, psycopg, kombu's Redis transport, the etcd client.
RUN pip install -e '.[example]'

# Not root: nothing here needs it.
RUN useradd --create-home --uid 10001 app
USER app

CMD ["celery", "-A", "example_project.djangoproj", "worker", "--loglevel", "INFO"]
