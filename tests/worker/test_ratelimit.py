"""Rate limits: parsing, the bucket arithmetic, and enforcement by real workers on every transport.

Start times are recorded by the tasks themselves (``ops.record``), so the rate is measured where
it matters: when tasks begin, not when they were sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aqueue import Worker
from aqueue.exceptions import ConfigurationError
from aqueue.worker.ratelimit import parse_rate, refill
from tests.apps.ops_tasks import OPS_TRANSPORTS, OpsTasks, build, url_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("10/m", 10 / 60),
        ("5/s", 5.0),
        ("100/h", 100 / 3600),
        ("2", 2.0),
        (3, 3.0),
        ("0.5/s", 0.5),
        (" 7 / m ", 7 / 60),
        (None, None),
        ("", None),
        ("0", None),
        (0, None),
    ],
)
def test_parse_rate(text: object, per_second: float | None) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("bad", ["ten/m", "5/d", "-1/s", "5/", True, [5]])
def test_a_bad_rate_is_refused_with_the_forms_it_takes(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"10/m"):
        parse_rate(bad)


def test_refill_takes_a_token_or_says_how_long_until_the_next() -> None:
    assert refill(1.0, 0.0, 0.0, 5.0, 1.0) == (0.0, 0.0)  # full: take it
    tokens, wait = refill(0.0, 0.0, 0.1, 5.0, 1.0)  # half a token after 0.1 s at 5/s
    assert tokens == pytest.approx(0.5) and wait == pytest.approx(0.1)
    assert refill(0.0, 0.0, 100.0, 5.0, 1.0) == (0.0, 0.0)  # refilled, capped at 1, taken


def test_an_unknown_scope_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="rate_limit_scope"):
        build("memory://", "q", rate_limit_scope="cluster")


@pytest.fixture(params=OPS_TRANSPORTS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request.param, request, tmp_path)


@pytest.fixture
def tag() -> str:
    """A suffix for task names: buckets and runtime rates are per task name on the server."""
    return f"-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def limited(url: str, tag: str) -> AsyncIterator[tuple[OpsTasks, OpsTasks]]:
    """Two apps on one queue (for memory:// one app: its state lives in the app) with
    ``ops.record`` limited to 5/s by ``task_annotations``."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    annotations = {f"ops.record{tag}": {"rate_limit": "5/s"}}
    first = build(url, queue, tag, task_annotations=annotations)
    second = (
        first if url.startswith("memory:") else build(url, queue, tag, task_annotations=annotations)
    )
    yield first, second
    await first.app.close()
    await second.app.close()


def assert_paced(starts: list[float], since: float, rate: float) -> None:
    """The k-th task (0-based, by start) began no sooner than ``k / rate`` after ``since``.

    This is what a bucket of one token refilled at ``rate`` guarantees when ``since`` is before
    its first token (it starts full): the tokens are at least ``1 / rate`` apart on the bucket's
    clock, and each task begins after its token. Gaps *between starts* promise nothing exact: a
    task begins some time after its token (its event loop, the broker write that marks it
    running), and that delay differs from task to task - a late first start puts the sixth token,
    granted 1.0 s after the first, less than a second after it. ``1e-6`` covers float rounding.
    """
    after = [t - since for t in sorted(starts)]
    early = [(k, round(s, 4)) for k, s in enumerate(after) if s < k / rate - 1e-6]
    assert early == [], f"(k, start in s after since) of tasks begun before k/{rate} s: {after}"


async def test_a_rate_holds_across_two_workers_together(limited: tuple[OpsTasks, OpsTasks]) -> None:
    # The bucket holds one token and starts full (Celery's semantics): the first task starts
    # at once, then one every 0.2 s however many workers run. Two workers with a bucket each
    # would start two tasks at once; a rate not held would start the 8th before 1.4 s.
    first, second = limited
    async with (
        Worker(first.app, concurrency=10, hostname="a@rate", shutdown_timeout=5),
        Worker(second.app, concurrency=10, hostname="b@rate", shutdown_timeout=5),
    ):
        sent = time.time()  # before the first token: no message was there to ask for it
        results = [await first.record.delay(i) for i in range(8)]
        assert await asyncio.gather(*(r.get(timeout=20) for r in results)) == list(range(8))
    starts = [t for _, t in first.starts + (second.starts if second is not first else [])]
    assert len(starts) == 8
    assert_paced(starts, sent, 5.0)


async def test_control_rate_limit_changes_the_rate_on_live_workers_and_later_ones(
    url: str, tag: str
) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    record = f"ops.record{tag}"
    t = build(url, queue, tag, task_annotations={record: {"rate_limit": "1/m"}})
    try:
        # Sent before the worker starts, so its first fetch takes them all.
        results = [await t.record.delay(i) for i in range(6)]
        async with Worker(t.app, concurrency=5, hostname="a@rate", shutdown_timeout=5) as w:
            assert await results[0].get(timeout=10) == 0
            # At 1/m the other five wait in the worker for tokens, holding no runner.
            scheduled = (await t.app.control.inspect().scheduled())["a@rate"]
            assert len(scheduled) == 5
            assert all(s["request"]["name"] == record for s in scheduled)
            assert (await t.app.control.inspect().active())["a@rate"] == []
            replies = await t.app.control.rate_limit(record, "50/s")
            assert [r.value["ok"] for r in replies] == ["new rate limit set successfully"]
            # At 50/s the rest run at once (at 1/m they would take five minutes).
            values = await asyncio.gather(*(r.get(timeout=10) for r in results[1:]))
            assert values == [1, 2, 3, 4, 5]
            assert w.gate is not None and w.gate.rate(record) == 50.0
        # A worker started later uses the rate set at runtime, not the annotation's.
        async with Worker(t.app, concurrency=1, hostname="b@rate", shutdown_timeout=5) as later:
            assert later.gate is not None and later.gate.rate(record) == 50.0
            registered = await t.app.control.inspect().registered()
            assert f"{record} [rate_limit=50/s]" in registered["b@rate"]
    finally:
        await t.app.close()


async def test_worker_scope_gives_each_worker_its_own_bucket(url: str, tag: str) -> None:
    # Celery's meaning: two workers at 1/s each start one task each at once.
    queue = f"q-{uuid.uuid4().hex[:12]}"
    t = build(
        url,
        queue,
        tag,
        task_annotations={f"ops.record{tag}": {"rate_limit": "1/s"}},
        rate_limit_scope="worker",
        worker_prefetch_multiplier=1,
    )
    # One message per worker, each on its own queue: otherwise the first worker may fetch both
    # before the second one polls, and both would meet the same per-worker bucket.
    queues = [f"{queue}-a", f"{queue}-b"]
    try:
        async with (
            Worker(t.app, [queues[0]], concurrency=1, hostname="a@rate", shutdown_timeout=5),
            Worker(t.app, [queues[1]], concurrency=1, hostname="b@rate", shutdown_timeout=5),
        ):
            results = [await t.record.apply_async((i,), queue=queues[i]) for i in range(2)]
            assert sorted(await asyncio.gather(*(r.get(timeout=10) for r in results))) == [0, 1]
        first, second = sorted(s for _, s in t.starts)
        assert second - first < 0.5  # a global 1/s bucket would keep them a second apart
    finally:
        await t.app.close()


async def test_a_backlog_beyond_the_parking_is_deferred_and_other_tasks_still_run(
    url: str, tag: str
) -> None:
    # prefetch 2: the worker parks one ops.record and defers the rest to the broker with an
    # eta, so the ops.add queued behind them is fetched and run without waiting its turn.
    queue = f"q-{uuid.uuid4().hex[:12]}"
    t = build(url, queue, tag, task_annotations={f"ops.record{tag}": {"rate_limit": "4/s"}})
    try:
        records = [await t.record.delay(i) for i in range(5)]
        added = await t.add.delay(2, 3)
        opened = time.time()  # before the first token: no worker was there to ask for it
        async with Worker(
            t.app, concurrency=1, prefetch_multiplier=2, hostname="a@rate", shutdown_timeout=5
        ):
            assert await added.get(timeout=10) == 5
            assert not all([await r.ready() for r in records])  # it did not wait for them all
            values = await asyncio.gather(*(r.get(timeout=20) for r in records))
        assert sorted(values) == [0, 1, 2, 3, 4]
        # Deferral never let one through without its token: the k-th began after k / 4 s.
        assert_paced([s for _, s in t.starts], opened, 4.0)
    finally:
        await t.app.close()
