"""Edit and read django-celery-beat's tables through the ORM, as the Django admin does.

``python dbeat_ctl.py migrate``; ``add NAME TASK SECONDS [--one-off]``; ``set NAME FIELD=JSON...``;
``delete NAME``; ``rows`` (JSON: name -> enabled, last_run_at, total_run_count).
"""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dbeat_settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from django_celery_beat.models import IntervalSchedule, PeriodicTask  # noqa: E402


def main(command: str, *args: str) -> None:
    if command == "migrate":
        call_command("migrate", verbosity=0)
    elif command == "add":
        name, task, seconds = args[:3]
        every, _ = IntervalSchedule.objects.get_or_create(every=int(seconds), period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=name, task=task, interval=every, one_off="--one-off" in args)
    elif command == "set":
        row = PeriodicTask.objects.get(name=args[0])
        for assignment in args[1:]:
            field, _, value = assignment.partition("=")
            setattr(row, field, json.loads(value))
        row.save()
    elif command == "delete":
        PeriodicTask.objects.get(name=args[0]).delete()
    elif command == "rows":
        print(json.dumps({row.name: {"enabled": row.enabled, "total_run_count": row.total_run_count,
                                     "last_run_at": row.last_run_at.isoformat() if row.last_run_at else None}
                          for row in PeriodicTask.objects.all()}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(*sys.argv[1:])
