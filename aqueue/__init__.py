"""aqueue: an asyncio-native distributed task queue with Celery's model.

Import the public API from here::

    from aqueue import Aqueue, Task, AsyncResult, signature, chain, group, chord
"""

from __future__ import annotations

from aqueue.app import Aqueue
from aqueue.beat.schedules import crontab
from aqueue.canvas.primitives import Signature, chain, chord, group, signature
from aqueue.results.group import GroupResult
from aqueue.results.result import AsyncResult, TaskInfo
from aqueue.serialization import register_serializer, register_type
from aqueue.task import Request, Task
from aqueue.worker import Worker
from aqueue.worker.lifespan import worker_state

__version__ = "0.1.0"

__all__ = [
    "Aqueue",
    "AsyncResult",
    "GroupResult",
    "Request",
    "Signature",
    "Task",
    "TaskInfo",
    "Worker",
    "__version__",
    "chain",
    "chord",
    "crontab",
    "group",
    "register_serializer",
    "register_type",
    "signature",
    "worker_state",
]
