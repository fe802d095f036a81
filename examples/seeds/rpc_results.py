"""Keeping results with ``rpc://`` on RabbitMQ alone: ready, get, propagate, traceback.

Mirrors: "Celery 初次使用" 保存结果 (``app = Celery('tasks', backend='rpc://',
broker='pyamqp://')``, ``result.ready()``, ``result.get(timeout=1)``,
``result.get(propagate=False)``, ``result.traceback``) and 配置
(``app.config_from_object('celeryconfig')`` with ``broker_url = 'pyamqp://'``,
``result_backend = 'rpc://'``: ``rpc_celeryconfig.py``).

The results travel back to this client as messages on its own reply queue, and are stored
nowhere: no Redis, no database. Differences from Celery: the calls are awaited; and, as in Celery,
only the handle returned by ``delay()`` in this client can see the result (another process's
``AsyncResult(id)`` raises ``ConfigurationError`` saying so instead of staying PENDING). The
tutorial's warning to ``get()`` or ``forget()`` every result does not apply: nothing is kept.

Needs a RabbitMQ: ``pyamqp://`` is guest@localhost:5672; ``$AQUEUE_BROKER_URL`` points elsewhere.
The worker runs inside the script.

Run: ``python -m examples.seeds.rpc_results``
"""

from __future__ import annotations

import asyncio
import os

from aqueue import Aqueue, Worker

# The tutorial's line, the broker overridable for a RabbitMQ other than localhost:5672.
app = Aqueue("tasks", backend="rpc://", broker=os.environ.get("AQUEUE_BROKER_URL", "pyamqp://"))


@app.task
async def add(x: int, y: int) -> int:
    await asyncio.sleep(0.2)
    return x + y


@app.task
async def fail() -> int:
    raise KeyError("missing")


async def main() -> None:
    async with Worker(app):
        result = await add.delay(4, 4)
        print("ready:", await result.ready())  # False: still running
        print("get(timeout=1):", await result.get(timeout=1))
        print("ready:", await result.ready(), "| state:", await result.state())

        bad = await fail.delay()
        print("get(propagate=False):", repr(await bad.get(propagate=False, timeout=1)))
        print("traceback (last line):", (bad.traceback or "").strip().splitlines()[-1])

    # The same with the configuration module, as the tutorial's celeryconfig.py.
    configured = Aqueue("tasks")
    configured.config_from_object("examples.seeds.rpc_celeryconfig")
    print("celeryconfig:", configured.conf.broker_url, configured.conf.result_backend)
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
