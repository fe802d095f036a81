"""First steps: the ``tasks.py`` with ``add`` from the Celery tutorials' quick starts.

Mirrors: "Celery 是什么" §1 (tasks.py), "Celery 初次使用" (应用 / 运行职程), the tasks.py of the
Redis-broker tutorial (创建任务) and "celery使用指南" §4.2 (官网上简单的celery案例).

Celery writes ``Celery('tasks', backend='redis://localhost:6379/0', broker='redis://...')``. Here
the URLs come from ``$AQUEUE_BROKER_URL`` / ``$AQUEUE_RESULT_BACKEND``, else the embedded
``aqueue.db`` beside this file, so no server is needed; to use Redis as the tutorials do::

    app = Aqueue("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")

Start a worker for it from the repository root (Celery: ``celery -A tasks worker -l info``)::

    aqueue worker -A examples.seeds.tasks -l info

then send a task with ``trigger.py`` (``python -m examples.seeds.trigger --external``).
"""

from __future__ import annotations

from aqueue import Aqueue

app = Aqueue("tasks")


@app.task
async def add(x: int, y: int) -> int:
    return x + y
