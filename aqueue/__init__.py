"""aqueue: an asyncio-native distributed task queue with Celery's model.

Import the public API from here::

    from aqueue import Aqueue, Task, AsyncResult, signature
"""

from __future__ import annotations

from aqueue.app import Aqueue
from aqueue.canvas import Signature, signature
from aqueue.result import AsyncResult, TaskInfo
from aqueue.task import Request, Task
from aqueue.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Aqueue",
    "AsyncResult",
    "Request",
    "Signature",
    "Task",
    "TaskInfo",
    "Worker",
    "__version__",
    "signature",
]
