"""A bound task (``bind=True``) reads the message it runs for through ``self.request``.

Mirrors: "Celery 是什么" §2.2 绑定任务为实例方法 (``@app.task(bind=True)``, then
``logger.info(self.request.__dict__)``), and the ``bind`` option of "Celery 在 web 开发中的运用".

``self.request`` is an :class:`aqueue.Request` dataclass (``id``, ``task``, ``args``, ``kwargs``,
``retries``, ``queue``, ``priority``, ``eta``, ``expires``, ``headers``, ``delivery_count``,
``hostname``, ``parent_id``, ``root_id``, ``group_id``, ``time_limit``, ``is_eager``,
``called_directly``); ``dataclasses.asdict`` stands in for Celery's ``__dict__``. Celery's
``get_task_logger(__name__)`` is an ordinary ``logging.getLogger(__name__)`` here.

Run: ``python -m examples.seeds.bind_request``
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from aqueue import Aqueue, Worker

app = Aqueue("tasks", broker="memory://", backend="memory://")
logger = logging.getLogger(__name__)


@app.task(bind=True)
async def add(self: Any, x: int, y: int) -> int:
    logger.info(dataclasses.asdict(self.request))
    return x + y


async def main() -> None:
    async with Worker(app):
        print("result:", await (await add.delay(4, 4)))
    await app.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s/%(name)s] %(message)s")
    asyncio.run(main())
