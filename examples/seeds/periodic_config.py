"""The tutorials' periodic-task configuration: ``beat_schedule`` and ``timezone``.  NEEDS BEAT.

Mirrors: "Celery 是什么" §2.4 定时/周期任务 (``celery_config.py``: ``'ptask'`` every 5 seconds
with ``timedelta``, ``CELERY_TIMEZONE = 'Asia/Shanghai'``), "Celery 在 web 开发中的运用"
设置任务调度器 (the same schedule inside the Flask config), and the Redis tutorial's
Scheduler and crontab sections (``'add-every-30-seconds'`` with ``args: (16, 16)``;
``'add-every-monday-morning'`` with ``crontab(hour=7, minute=30, day_of_week=1)``).

Celery 3's ``CELERYBEAT_SCHEDULE`` / ``CELERY_TIMEZONE`` are ``beat_schedule`` / ``timezone``.
Cron fields are read in ``timezone``. Used by ``periodic.py``; needs ``aqueue.crontab`` and the
``aqueue beat`` command, which are not built yet.
"""

# No `from __future__ import annotations` here: it would be read as a setting named "annotations".
from datetime import timedelta

from aqueue import crontab

timezone = "Asia/Shanghai"
beat_schedule = {
    "ptask": {
        "task": "examples.seeds.periodic.period_task",
        "schedule": timedelta(seconds=5),
    },
    "add-every-30-seconds": {
        "task": "examples.seeds.periodic.add",
        "schedule": timedelta(seconds=30),
        "args": (16, 16),
    },
    # Executes every Monday morning at 7:30 a.m. (Asia/Shanghai)
    "add-every-monday-morning": {
        "task": "examples.seeds.periodic.add",
        "schedule": crontab(hour=7, minute=30, day_of_week=1),
        "args": (16, 16),
    },
}
