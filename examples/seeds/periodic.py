"""Periodic tasks run by beat from the ``beat_schedule`` setting.  NEEDS BEAT.

Mirrors: "Celery 是什么" §2.4 定时/周期任务 (``app.config_from_object('celery_config')`` and the
bound ``period_task`` that prints ``self.request.id``; run the worker, then ``celery -A task
beat``), "Celery 在 web 开发中的运用" 设置任务调度器 (a worker process and a beat process), and the
Redis tutorial's Scheduler (``celery -A proj worker -B -l info``).

Needs ``aqueue beat`` and ``aqueue.crontab`` (the issue is pending): the configuration in
``periodic_config.py`` is written to API.md's Periodic tasks section. Then, from the repository
root, in two shells::

    aqueue worker -A examples.seeds.periodic -l info
    aqueue beat -A examples.seeds.periodic

or beat inside the worker process: ``aqueue worker -A examples.seeds.periodic -B -l info``.
Several beat processes may run at once; each tick is sent once.
"""

from __future__ import annotations

from typing import Any

from aqueue import Aqueue

app = Aqueue("tasks")
app.config_from_object("examples.seeds.periodic_config")


@app.task(bind=True)
async def period_task(self: Any) -> None:
    print(f"period task done: {self.request.id}")


@app.task
async def add(x: int, y: int) -> int:
    return x + y
