"""The app of the authentication tests (tests/transports/test_auth.py), in-process and in worker
subprocesses (``-A tests.apps.auth_tasks:app``).

``build(url, queue, name)`` makes a fresh app on ``url`` (broker and result backend) whose tasks
touch every Redis role: results, chords (a counted set), a global rate limit (a token bucket),
and a beat entry each second. A subprocess builds it from ``$AQUEUE_BROKER_URL``,
``$AQUEUE_AUTH_QUEUE`` and ``$AQUEUE_AUTH_APP`` (the app's name: its beat keys).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aqueue import Aqueue, Task


@dataclass
class AuthTasks:
    app: Aqueue
    add: Task[[int, int], int]
    total: Task[[list[int]], int]
    limited: Task[[int], int]


def build(url: str, queue: str, name: str = "auth") -> AuthTasks:
    """The app on ``url``, its tasks on ``queue``; ``beat_schedule`` sends ``auth.add(1, 1)``
    each second (run only by a worker started with ``-B``)."""
    app = Aqueue(name, broker=url, backend=url, task_default_queue=queue)
    app.conf.beat_schedule = {"each-second": {"task": "auth.add", "schedule": 1.0, "args": (1, 1)}}

    @app.task(name="auth.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="auth.total")
    async def total(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="auth.limited", rate_limit="100/s")
    async def limited(x: int) -> int:
        return x

    return AuthTasks(app, add, total, limited)


app = build(
    os.environ.get("AQUEUE_BROKER_URL", "memory://"),
    os.environ.get("AQUEUE_AUTH_QUEUE", "default"),
    os.environ.get("AQUEUE_AUTH_APP", "auth"),
).app
