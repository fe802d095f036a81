"""The tasks of the ``proj`` package (Celery's ``proj/tasks.py``)."""

from __future__ import annotations

from examples.seeds.proj.app import app


@app.task
async def add(x: int, y: int) -> int:
    return x + y
