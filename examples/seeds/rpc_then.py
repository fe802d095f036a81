"""``then`` with ``Celery(broker='amqp://', backend='rpc')``, and what another client sees.

Mirrors: "Celery 是什么" §2.7 关于 AsyncResult (``app = Celery(broker='amqp://', backend='rpc')``,
``add.delay(2, 2).then(on_result_ready)``, ``AsyncResult(task_id=xxx)``).

Celery needs gevent's monkey patching for ``then``; here it is an asyncio task. ``backend='rpc'``
(Celery's spelling, also ``'rpc://'``) sends results back over the AMQP broker to the client
that sent the task. ``app.AsyncResult(task_id)`` in that client sees it while a handle of the
send is alive; a handle made by another client raises ``ConfigurationError`` naming the fix (a
Redis or SQLite result backend) instead of staying PENDING for ever.

Needs a RabbitMQ: ``amqp://`` is guest@localhost:5672; ``$AQUEUE_BROKER_URL`` points elsewhere.

Run: ``python -m examples.seeds.rpc_then``
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aqueue import Aqueue, AsyncResult, Worker
from aqueue.exceptions import ConfigurationError

BROKER = os.environ.get("AQUEUE_BROKER_URL", "amqp://")
app = Aqueue(broker=BROKER, backend="rpc")  # the tutorial's line


@app.task
async def add(x: int, y: int) -> int:
    return x + y


def on_result_ready(result: AsyncResult[Any]) -> Any:
    print(f"Received result for id {result.id!r}: {result.result!r}")
    return result.result


async def main() -> None:
    async with Worker(app):
        r = await add.delay(2, 2)
        print("then() yielded:", await r.then(on_result_ready))
        same = app.AsyncResult(r.id)  # Celery: AsyncResult(task_id=...), in the same client
        print("by id, same client:", await same.state(), await same.get(timeout=1))

        other = Aqueue(broker=BROKER, backend="rpc")  # another client, e.g. another process
        try:
            await other.AsyncResult(r.id).get(timeout=1)
        except ConfigurationError as exc:
            print("by id, another client:", str(exc).split(";")[0])
        await other.close()
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
