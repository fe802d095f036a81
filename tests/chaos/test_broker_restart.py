"""The broker's server stopped and started again while a worker drains tasks and a producer
keeps sending: Redis (broker and results; ``appendonly yes``, ``appendfsync always``) stopped
with SIGTERM and with SIGKILL, and RabbitMQ (broker; results on Redis) stopped gracefully and
with SIGKILL. Every ``delay()`` that returned runs at least once; on Redis the first task runs
within 5 s of the server answering again (the time is measured and printed for both)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from aqueue import Task
from aqueue.exceptions import BrokerError
from tests.chaos import chaos_app
from tests.chaos.harness import (
    SIZES,
    Ledger,
    RedisAof,
    Result,
    peak_rss_mb,
    report,
    worker,
    worker_env,
)

CONCURRENCY = 20
VISIBILITY = 5.0  # what a run cut off by the outage waits before it is delivered again
RATE = 200.0  # sends per second, in a group every TICK seconds
TICK = 0.1
SEND_S = SIZES.restart_tasks / RATE  # how long sending takes when nothing fails
# Each task sleeps so long that the worker's capacity is 4/5 of the send rate: a backlog
# builds up until the fault (in the stream or queue, leased to the worker, and in flight).
TASK_S = CONCURRENCY / (RATE * 0.8)
FAULT_AT = 1 / 3  # the server goes down once this share of the keys has been sent
QUIET_S = 1.0  # no run ending for this long while the server is down: the worker is idle
OUTAGE_S = 3.0  # the server stays down at least this long
REDIS_RECOVERY_BAR = 5.0  # seconds from the server answering to the first task run


@dataclass
class Sends:
    """The producer's calls: a key is acknowledged when its ``delay()`` returned."""

    acknowledged: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)

    @property
    def attempted(self) -> int:
        return len(self.acknowledged) + len(self.failed)


async def produce(
    work: Task[..., Any],
    run: str,
    total: int,
    sends: Sends,
    due: asyncio.Event,
    back: asyncio.Event,
) -> None:
    """Send keys at a steady rate, each ``delay()`` on its own (concurrent ones share a round
    trip): ``FAULT_AT`` of ``total``, then set ``due``; on while the server is down, until
    ``back`` is set; then the rest of ``total``."""
    loop = asyncio.get_running_loop()
    per_tick = max(1, round(RATE * TICK))
    calls: set[asyncio.Task[None]] = set()
    key = 0

    async def send(key: int) -> None:
        try:
            await work.delay(run, key, TASK_S, total)
        except BrokerError:
            sends.failed.add(key)
        else:
            sends.acknowledged.add(key)

    async def send_until(last: int | None, stop: asyncio.Event | None = None) -> None:
        nonlocal key
        start = loop.time()
        for tick in itertools.count():
            # The rate of the load (not a synchronisation): the next group's time.
            await asyncio.sleep(max(0.0, start + tick * TICK - loop.time()))
            for _ in range(per_tick):
                if (last is not None and key >= last) or (stop is not None and stop.is_set()):
                    return
                call = asyncio.create_task(send(key))
                calls.add(call)
                call.add_done_callback(calls.discard)
                key += 1

    first = round(total * FAULT_AT)
    await send_until(first)
    due.set()
    await send_until(None, back)
    await send_until(key + total - first)
    await asyncio.gather(*calls)


async def drain_through_restart(
    scenario: str,
    broker: str,
    backend: str,
    ledger: Ledger,
    down: Callable[[], object],
    up: Callable[[], object],
) -> Result:
    """Run the scenario (see the module's docstring); return its figures, asserting no loss."""
    total = SIZES.restart_tasks
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    producer = chaos_app.build(broker, backend, queue, VISIBILITY)
    work = producer.tasks["chaos.work"]
    env = worker_env(broker, backend, queue, ledger, CHAOS_VISIBILITY=str(VISIBILITY))
    sends = Sends()
    due, back = asyncio.Event(), asyncio.Event()
    t0 = time.monotonic()
    async with worker(env, CONCURRENCY) as drainer:
        assert drainer.proc is not None
        sending = asyncio.create_task(produce(work, ledger.run, total, sends, due, back))
        try:
            await asyncio.wait_for(due.wait(), timeout=SEND_S * 3 + 10)
            ran_before = await ledger.distinct()
            down_at = time.monotonic()
            await asyncio.to_thread(down)
            # The worker runs what it had started; then nothing can run until the server is
            # back (marking a run, acking and fetching all need it).
            assert await ledger.wait_quiet(QUIET_S, timeout=60), "runs went on with no server"
            failed_while_down = len(sends.failed)
            await asyncio.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))  # the fault
            await asyncio.to_thread(up)
            back_at = time.monotonic()
            back.set()
            ran = await ledger.wait_pulse(60, clear=False)
            assert ran, "no task ran within 60 s of the restart:\n" + "\n".join(drainer.lines[-40:])
            recovery = time.monotonic() - back_at
            outage = back_at - down_at
            await asyncio.wait_for(sending, timeout=SEND_S * 3 + 60)
        finally:
            sending.cancel()
            await producer.close()
        lost = await ledger.wait_ran(sends.acknowledged, timeout=VISIBILITY * 4 + SEND_S * 2)
        peak = peak_rss_mb(drainer.proc.pid)
    wall = time.monotonic() - t0
    runs = await ledger.runs()
    duplicated = sum(n - 1 for n in runs.values())
    result = report(
        Result(
            scenario,
            len(sends.acknowledged),
            len(lost),
            duplicated,
            recovery_s=recovery,
            peak_rss_mb=peak,
            wall_s=wall,
            notes={
                "attempted": sends.attempted,
                "send_failed": len(sends.failed),
                "failed_but_ran": len(sends.failed & runs.keys()),
                "ran_before_outage": ran_before,
                "outage_s": round(outage, 2),
            },
        )
    )
    assert lost == [], f"{len(lost)} acknowledged sends never ran: {lost[:20]}"
    assert failed_while_down, "no send failed while the server was down: the outage was missed"
    return result


# -- Redis ------------------------------------------------------------------------------------


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_redis_restart_with_aof(redis_aof: RedisAof, ledger: Ledger, how: str) -> None:
    down = redis_aof.stop if how == "SIGTERM" else redis_aof.kill
    result = await drain_through_restart(
        f"Redis restart ({how}), appendfsync always",
        redis_aof.url,
        redis_aof.url,
        ledger,
        down,
        redis_aof.start,
    )
    assert result.recovery_s is not None
    assert result.recovery_s <= REDIS_RECOVERY_BAR, result.recovery_s


# -- RabbitMQ ---------------------------------------------------------------------------------


def kill_node(node: Any) -> None:
    """SIGKILL the RabbitMQ node (its start script and Erlang VM share a process group)."""
    proc = node.proc
    node.proc = None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("how", ["stop", "SIGKILL"])
async def test_rabbitmq_restart(
    rabbit_node: Any, redis_server: str, ledger: Ledger, how: str
) -> None:
    down = rabbit_node.stop if how == "stop" else lambda: kill_node(rabbit_node)
    await drain_through_restart(
        f"RabbitMQ restart ({how}), results on Redis",
        str(rabbit_node.url),
        f"{redis_server}/0",
        ledger,
        down,
        rabbit_node.start,
    )
