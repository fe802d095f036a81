"""A task that logs, for the log-format tests (``-A tests.apps.log_tasks``; broker from
``$AQUEUE_BROKER_URL``, queue from ``$AQUEUE_E2E_QUEUE``)."""

from __future__ import annotations

import logging
import os

from aqueue import Aqueue
from aqueue.logs import get_task_logger

url = os.environ.get("AQUEUE_BROKER_URL", "memory://")
app = Aqueue("logs", broker=url, backend=url)
app.conf.task_default_queue = os.environ.get("AQUEUE_E2E_QUEUE", "default")
logger = get_task_logger(__name__)


@app.task(name="logs.say")
async def say(text: str) -> str:
    logger.info("task says %s", text)
    logging.getLogger("somebody.else").warning("a library line inside the task")
    return text
