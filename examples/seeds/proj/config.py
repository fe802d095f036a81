"""The ``proj`` configuration module (Celery's ``proj/config.py``), with lowercase names.

Mirrors the Redis tutorial's config.py: ``CELERY_RESULT_BACKEND = 'redis://127.0.0.1:6379/5'``,
``BROKER_URL = 'redis://127.0.0.1:6379/6'``, then ``CELERY_TIMEZONE = 'Asia/Shanghai'`` and a
``CELERYBEAT_SCHEDULE`` that runs ``proj.tasks.add(16, 16)`` every 30 seconds. The schedule is
accepted today; it runs once ``aqueue beat`` exists (``aqueue worker -B``, see ``periodic.py``).
"""

# No `from __future__ import annotations` here: it would be read as a setting named "annotations".
from datetime import timedelta

result_backend = "redis://127.0.0.1:6379/5"
broker_url = "redis://127.0.0.1:6379/6"

timezone = "Asia/Shanghai"

beat_schedule = {
    "add-every-30-seconds": {
        "task": "examples.seeds.proj.tasks.add",
        "schedule": timedelta(seconds=30),
        "args": (16, 16),
    },
}
