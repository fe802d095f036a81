"""Beat in real time, in one process with a real worker: ticks, and entries added at runtime."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from aqueue import Aqueue, Worker
from aqueue.beat import Beat

pytestmark = pytest.mark.slow


class Counting:
    """An app whose task counts its runs and wakes waiters on each one."""

    def __init__(self, url: str) -> None:
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        self.app = Aqueue(f"rt-{uuid.uuid4().hex[:8]}", broker=url, backend=url)
        self.app.conf.task_default_queue = self.queue
        self.runs: list[int] = []
        self.changed = asyncio.Condition()

        @self.app.task(name="rt.count")
        async def count(n: int = 0) -> None:
            async with self.changed:
                self.runs.append(n)
                self.changed.notify_all()

    async def wait_runs(self, n: int, timeout: float = 10) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.runs) >= n), timeout)


@pytest.fixture
async def counting(backend_url: str) -> AsyncIterator[Counting]:
    """On each transport that can also keep beat's state (memory, SQLite, Redis)."""
    c = Counting(backend_url)
    yield c
    await c.app.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
async def test_one_second_entry_over_five_seconds_runs_five_times(counting: Counting) -> None:
    counting.app.conf.beat_schedule = {
        "each-second": {"task": "rt.count", "schedule": timedelta(seconds=1)}
    }
    async with Worker(counting.app, concurrency=4, shutdown_timeout=5):
        beat = Beat(counting.app)
        await beat.start()
        await asyncio.sleep(5.0)  # the span being measured, not a synchronisation
        await beat.stop()
        sent = beat.sent["each-second"]
        await counting.wait_runs(sent)
    assert 4 <= sent <= 6
    assert len(counting.runs) == sent


@pytest.mark.timeout(30)
async def test_entry_added_at_runtime_runs_and_stops_once_removed(counting: Counting) -> None:
    app = counting.app
    async with (
        Worker(app, concurrency=4, shutdown_timeout=5),
        Beat(app, max_interval=0.1) as beat,
    ):
        entry = await app.beat.add("dyn", task="rt.count", schedule=0.2, args=(7,))
        assert entry.dynamic and entry.since is not None
        assert [(e.name, e.dynamic) for e in await app.beat.list()] == [("dyn", True)]
        await counting.wait_runs(2)  # picked up by the running beat, no restart
        assert set(counting.runs) == {7}
        listed = await app.beat.list()
        assert listed[0].last_run is not None and listed[0].last_run >= entry.since

        assert await app.beat.remove("dyn")
        await beat.next_pass()  # the first pass to read the store after the removal
        sent = beat.sent["dyn"]
        until = time.time() + 0.6  # three periods of the removed entry
        while time.time() < until:
            await beat.next_pass()
        assert beat.sent["dyn"] == sent  # nothing more was sent
        await counting.wait_runs(sent)
        assert len(counting.runs) == sent
        assert await app.beat.list() == []
        assert not await app.beat.remove("dyn")
