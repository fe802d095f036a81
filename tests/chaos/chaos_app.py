"""The task the chaos suite runs, in worker subprocesses and in the test process.

``aqueue worker -A tests.chaos.chaos_app:app`` builds the app from ``$AQUEUE_BROKER_URL``,
``$CHAOS_BACKEND``, ``$CHAOS_QUEUE``, ``$CHAOS_VISIBILITY`` (seconds),
``$CHAOS_CONNECTION_TIMEOUT`` (seconds) and ``$CHAOS_SOCKET_TIMEOUT`` (seconds,
``redis_socket_timeout``; unset: none). Every run of ``chaos.work`` (and of ``chaos.echo``,
which returns its key) is written to a *ledger*:
a Redis server of its own (``$CHAOS_LEDGER``), never the one under test, so what the ledger
says survives whatever the scenario does to the broker.

The ledger, per scenario run ``run``:

- ``{run}:runs``: hash key -> how many times the task with that key ran to its end;
- ``{run}:started:{pid}``: set of the keys a worker process started (to count what a killed
  worker was running);
- ``{run}:finished``: a list that gets one item when the ``total``-th distinct key has run
  (the test waits on it with ``BLPOP``: an event, no polling);
- ``{run}:pulse``: a list of at most one item, pushed on every run (the test waits on it to
  time the first task after a fault).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis

from aqueue import Aqueue

RECORD_RUN = """
local count = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, 0)
if count == 1 then
  local distinct = redis.call('INCR', KEYS[4])
  if distinct == tonumber(ARGV[2]) then redis.call('LPUSH', KEYS[2], 'done') end
end
return count
"""

_LEDGERS: dict[int, aioredis.Redis] = {}


def ledger() -> aioredis.Redis:
    """This event loop's client of the ledger server."""
    loop_id = id(asyncio.get_running_loop())
    client = _LEDGERS.get(loop_id)
    if client is None:
        client = aioredis.Redis.from_url(os.environ["CHAOS_LEDGER"])
        _LEDGERS[loop_id] = client
    return client


async def record_run(run: str, key: int, total: int) -> None:
    """Write one run of ``key`` to the ledger (see the module's docstring)."""
    keys = [f"{run}:runs", f"{run}:finished", f"{run}:pulse", f"{run}:distinct"]
    await ledger().eval(RECORD_RUN, 4, *keys, key, total)


def build(
    broker: str,
    backend: str,
    queue: str,
    visibility: float = 30.0,
    connection_timeout: float = 4.0,
    socket_timeout: float | None = None,
) -> Aqueue:
    """An app with ``chaos.work`` (no result) and ``chaos.echo`` (returns its key) on
    ``broker``, results on ``backend``."""
    app = Aqueue(
        "chaos",
        broker=broker,
        backend=backend,
        task_default_queue=queue,
        broker_transport_options={"visibility_timeout": visibility},
        broker_connection_timeout=connection_timeout,
        redis_socket_timeout=socket_timeout,
    )

    @app.task(name="chaos.work", ignore_result=True)
    async def work(run: str, key: int, seconds: float, total: int, track: bool = False) -> None:
        if track:
            await ledger().sadd(f"{run}:started:{os.getpid()}", key)
        if seconds > 0:
            await asyncio.sleep(seconds)
        await record_run(run, key, total)

    @app.task(name="chaos.echo")
    async def echo(run: str, key: int, total: int) -> int:
        await record_run(run, key, total)
        return key

    return app


def _from_env() -> Aqueue:
    env: dict[str, Any] = os.environ
    broker = env.get("AQUEUE_BROKER_URL", "memory://")
    return build(
        broker,
        env.get("CHAOS_BACKEND", broker),
        env.get("CHAOS_QUEUE", "default"),
        float(env.get("CHAOS_VISIBILITY", "30")),
        float(env.get("CHAOS_CONNECTION_TIMEOUT", "4")),
        float(env["CHAOS_SOCKET_TIMEOUT"]) if env.get("CHAOS_SOCKET_TIMEOUT") else None,
    )


app = _from_env()
