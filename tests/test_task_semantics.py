"""Unique tasks, idempotent sends and dependencies (docs/tasks.md), end to end on a real worker.

The multi-process tests use ``shared_url`` (SQLite, Redis, and RabbitMQ with a Redis result
backend, where the locks live); the rest run on every transport.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import Worker
from aqueue.exceptions import BrokerConnectionError, ConfigurationError, DependencyFailed
from aqueue.message import decode
from aqueue.sending import guard
from aqueue.sending.unique import unique_lock
from aqueue.transports import has_locks
from tests.apps import semantics_tasks as sem
from tests.apps.semantics_tasks import SemanticsTasks
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)

# 4 processes x 250 sends over 100 keys: each send prints (key, the id of the handle it got).
SENDER = """
import asyncio, json, sys
from tests.apps.semantics_tasks import build

async def main() -> None:
    url, queue, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = build(url, queue=queue)
    keys = [f"{queue}-k{i % 100}" for i in range(start, start + 250)]
    handles = await asyncio.gather(*(t.keyed.delay(key) for key in keys))
    print(json.dumps([[key, h.id] for key, h in zip(keys, handles)]))
    await t.app.close()

asyncio.run(main())
"""


@pytest.fixture
async def st(transport_url: str) -> AsyncIterator[SemanticsTasks]:
    tasks = sem.build(transport_url, queue=f"q-{uuid.uuid4().hex[:12]}")
    sem.RUNS.clear()
    sem.ORDER.clear()
    sem.STARTED.clear()
    yield tasks
    await tasks.app.close()


async def send_from_processes(url: str, queue: str) -> list[tuple[str, str]]:
    """1,000 sends of ``sem.keyed`` over keys k0..k99 from 4 processes at once."""
    pipe = asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", SENDER, url, queue, str(250 * n), stdout=pipe, stderr=pipe
        )
        for n in range(4)
    ]
    sent: list[tuple[str, str]] = []
    for proc in procs:
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        sent.extend((key, task_id) for key, task_id in json.loads(out))
    return sent


async def test_1000_sends_of_100_unique_keys_run_100_times(shared_url: str) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    t = sem.build(shared_url, queue=queue)
    sem.RUNS.clear()
    try:
        seen: set[str] = set()
        for round_ in (1, 2):
            # Every send happens while the first call of its key is queued (no worker yet).
            sent = await send_from_processes(shared_url, queue)
            assert len(sent) == 1000
            by_key: dict[str, set[str]] = {}
            for key, task_id in sent:
                by_key.setdefault(key, set()).add(task_id)
            assert len(by_key) == 100
            assert all(len(ids) == 1 for ids in by_key.values()), "a key got two calls"
            ids = {next(iter(found)) for found in by_key.values()}
            assert not ids & seen  # after the first round finished, each key ran anew
            seen |= ids
            async with Worker(t.app, concurrency=20, shutdown_timeout=5):
                results = await asyncio.gather(*(t.app.AsyncResult(i).get(timeout=60) for i in ids))
            assert sorted(results) == sorted(by_key)
            assert {key: n for (_, key), n in sem.RUNS.items()} == dict.fromkeys(by_key, round_)
    finally:
        await t.app.close()


async def test_sigkilled_worker_frees_the_key_and_the_task_runs_once_more(
    shared_url: str, tmp_path: Path
) -> None:
    visibility = 3.0
    queue = f"q-{uuid.uuid4().hex[:12]}"
    t = sem.build(shared_url, queue=queue, broker_transport_options={"visibility_timeout": 3.0})
    env = {
        "AQUEUE_BROKER_URL": shared_url,
        "AQUEUE_E2E_QUEUE": queue,
        "AQUEUE_E2E_VISIBILITY": str(visibility),
    }
    marks = str(tmp_path / "runs")
    app = "tests.apps.semantics_tasks"
    try:
        first = await t.once_more.delay(marks, 600.0)
        async with WorkerProcess(app, ["-c", "2"], env) as doomed:
            await doomed.wait_for("once_more run 1 written", timeout=30)  # its mark is down
            again = await t.once_more.delay(marks, 600.0)
            assert again.id == first.id  # running: the key is taken
            doomed.signal(signal.SIGKILL)
            await doomed.wait()
        killed = time.monotonic()
        backend = await t.app.result_backend()
        assert has_locks(backend)
        lock = unique_lock("sem.once_more", (marks, 600.0), {}, t.once_more, {}, None)
        assert lock is not None
        key = lock.key
        probe = uuid.uuid4().hex
        while await backend.lock(key, probe, 0.05) != probe:
            assert time.monotonic() - killed < visibility + 1.0, "the lock outlived its lease"
            await asyncio.sleep(0.05)  # waiting for an expiry on the server: nothing to await
        freed_after = time.monotonic() - killed
        assert freed_after <= visibility + 1.0
        await backend.unlock(key, probe)
        async with WorkerProcess(app, ["-c", "2"], env):
            assert await first.get(timeout=60) == 2  # ran once more, to the end
        assert _lines(marks) == ["run", "run"]
        print(f"unique lock freed {freed_after:.2f}s after SIGKILL (visibility timeout 3s)")
    finally:
        await t.app.close()


def _lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


async def test_50_duplicate_sends_of_one_task_id_run_once(st: SemanticsTasks) -> None:
    order = f"order-{uuid.uuid4().hex[:8]}"
    async with Worker(st.app, concurrency=10, shutdown_timeout=5):
        handles = await asyncio.gather(
            *(st.charge.apply_async((order, 1999), task_id=order) for _ in range(50))
        )
        assert {h.id for h in handles} == {order}
        results = await asyncio.gather(*(h.get(timeout=30) for h in handles))
        # Sent again after it finished: still not run again.
        late = await st.charge.apply_async((order, 1999), task_id=order)
        assert await late.get(timeout=30) == f"charged 1999 for {order}"
    assert results == [f"charged 1999 for {order}"] * 50
    assert sem.RUNS["charge", order] == 1


@pytest.mark.parametrize("lands", [True, False], ids=["publish-lands", "publish-fails"])
async def test_a_cancelled_idempotent_send_keeps_its_mark_only_if_the_message_lands(
    lands: bool,
) -> None:
    """A caller gives up on ``apply_async(task_id=X)`` (its request timed out) while the
    publish is in flight. The publish goes on: if it lands, a retry with the same id publishes
    nothing (the message is queued once); if it fails, the mark is freed and the retry sends."""
    url = f"memory://cancelled-{uuid.uuid4().hex[:8]}"
    t = sem.build(url, queue=f"q-{uuid.uuid4().hex[:12]}")
    try:
        broker = await t.app.broker()
        publish = broker.publish
        held, release = asyncio.Event(), asyncio.Event()

        async def slow(outgoing: Any) -> Any:  # a broker slow to answer, then right or wrong
            held.set()
            await release.wait()
            if not lands:
                raise BrokerConnectionError("dropped")
            return await publish(outgoing)

        broker.publish = slow  # type: ignore[method-assign]
        order = f"order-{uuid.uuid4().hex[:8]}"
        sending = asyncio.ensure_future(t.charge.apply_async((order, 5), task_id=order))
        await held.wait()
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        release.set()
        publisher = t.app.sender._loops.get().publisher
        assert publisher is not None
        await asyncio.gather(*list(publisher._running), return_exceptions=True)
        # The publish, and the freeing of its marks if it failed (sets of the guard's own).
        await asyncio.gather(*getattr(guard, "_LEFT", ()), *getattr(guard, "_FREEING", ()))
        broker.publish = publish  # type: ignore[method-assign]
        retry = await t.charge.apply_async((order, 5), task_id=order)
        assert retry.id == order
        queued = await broker.fetch([t.app.conf.task_default_queue], 100, 0.05)
        assert [decode(d.body).id for d in queued] == [order]  # once, either way
    finally:
        await t.app.close()


async def test_unique_key_per_call_returns_the_first_handle(st: SemanticsTasks) -> None:
    tag = uuid.uuid4().hex  # keys of this test only (the servers are shared)
    first = await st.charge.apply_async(("a", 1), unique_key=f"user:42-{tag}")
    second = await st.charge.apply_async(("b", 2), unique_key=f"user:42-{tag}")
    other = await st.charge.apply_async(("c", 3), unique_key=f"user:43-{tag}")
    assert second.id == first.id
    assert other.id != first.id
    async with Worker(st.app, concurrency=4, shutdown_timeout=5):
        assert await second.get(timeout=30) == "charged 1 for a"
        await other.get(timeout=30)
        # Finished: the key is free again.
        third = await st.charge.apply_async(("d", 4), unique_key=f"user:42-{tag}")
        assert third.id != first.id
        assert await third.get(timeout=30) == "charged 4 for d"


async def test_unique_queued_frees_the_key_when_the_run_starts(st: SemanticsTasks) -> None:
    # One runner: the second call stays queued while the first runs.
    async with Worker(st.app, concurrency=1, shutdown_timeout=5):
        key = uuid.uuid4().hex  # of this test only (the servers are shared)
        started = sem.STARTED.setdefault(key, asyncio.Event())
        first = await st.queued_only.delay(key, 0.5)
        await asyncio.wait_for(started.wait(), 10)
        second = await st.queued_only.delay(key, 0)
        assert second.id != first.id  # running, not queued: a new call is sent
        third = await st.queued_only.delay(key, 0)
        assert third.id == second.id  # that one is queued
        await asyncio.gather(first.get(timeout=30), second.get(timeout=30))
    assert sem.RUNS["queued_only", key] == 2


async def test_a_diamond_runs_in_order_and_d_gets_b_and_c(st: SemanticsTasks) -> None:
    a = await st.step.delay("a", 1)
    b = await st.step.apply_async(("b", 10), after=[a])
    c = await st.step.apply_async(("c", 100), after=[a])
    d = await st.gather.apply_async(("d",), after=[b, c])
    assert await b.state() == "PENDING"  # held: nothing runs before a worker runs a
    async with Worker(st.app, concurrency=4, shutdown_timeout=5):
        assert await d.get(timeout=30) == [11, 101]
    assert sem.ORDER[0] == "a" and sem.ORDER[-1] == "d"
    assert sorted(sem.ORDER[1:3]) == ["b", "c"]


async def test_dependencies_already_finished_release_at_once(st: SemanticsTasks) -> None:
    async with Worker(st.app, concurrency=4, shutdown_timeout=5):
        a = await st.step.delay("a", 1)
        await a.get(timeout=30)
        b = await st.step.apply_async(("b", 10), after=[a.id])
        assert await b.get(timeout=30) == 11


async def test_a_failing_dependency_fails_the_task_naming_it(st: SemanticsTasks) -> None:
    a = await st.step.delay("a", 1)
    b = await st.fails.apply_async(("b",), after=[a])
    c = await st.step.apply_async(("c", 100), after=[a])
    d = await st.gather.apply_async(("d",), after=[b, c])
    e = await st.gather.apply_async(("e",), after=[d])  # two levels down
    async with Worker(st.app, concurrency=4, shutdown_timeout=5):
        with pytest.raises(DependencyFailed) as failed:
            await d.get(timeout=30)
        with pytest.raises(DependencyFailed) as below:
            await e.get(timeout=30)
        assert await c.get(timeout=30) == 101
    assert f"sem.fails[{b.id}]" in str(failed.value)
    assert "ValueError: b failed on purpose" in str(failed.value)
    assert f"sem.gather[{d.id}]" in str(below.value)
    assert "d" not in sem.ORDER and "e" not in sem.ORDER


async def test_bad_options_are_refused_before_sending(st: SemanticsTasks) -> None:
    with pytest.raises(ConfigurationError, match="after="):
        await st.step.apply_async(("x", 1), after=[])
    with pytest.raises(ConfigurationError, match="unique key"):
        await st.charge.apply_async(("x", 1), unique_key="")
    with pytest.raises(ConfigurationError, match="unique must be"):
        st.app.task(unique="sometimes")(lambda: None)
    with pytest.raises(ConfigurationError, match="not a canvas"):
        await (st.step.s("x", 1) | st.step.s("y")).apply_async(after=["z"])


async def test_a_failed_chain_fails_the_task_waiting_for_it(st: SemanticsTasks) -> None:
    # The chain's last step never runs: its FAILURE is written by the worker that ran the failing
    # step, which must release (fail) the waiting task too.
    pipeline = await (st.fails.si("first") | st.step.si("never", 1)).apply_async()
    waiting = await st.gather.apply_async(("w",), after=[pipeline])
    async with Worker(st.app, concurrency=4, shutdown_timeout=5):
        with pytest.raises(DependencyFailed, match=f"sem.step\\[{pipeline.id}\\] failed"):
            await waiting.get(timeout=30)
    assert "w" not in sem.ORDER and "never" not in sem.ORDER


async def test_the_lock_is_freed_on_failure_and_on_expiry(st: SemanticsTasks) -> None:
    backend = await st.app.result_backend()
    assert has_locks(backend)
    tag = uuid.uuid4().hex  # keys of this test only (the servers are shared)
    failing = await st.fails.apply_async(("f",), unique_key=tag)
    expired = await st.patient.apply_async((tag,), expires=-1)  # expired when a worker sees it
    patient = unique_lock("sem.patient", (tag,), {}, st.patient, {}, None)
    assert patient is not None and patient.ttl == 60
    assert await backend.lock(patient.key, "probe", 60) == expired.id  # held while queued
    async with Worker(st.app, concurrency=2, shutdown_timeout=5) as worker:
        await worker.wait_processed(2)
    with pytest.raises(ValueError, match="f failed on purpose"):
        await failing.get(timeout=5)
    assert await expired.state() == "REVOKED"
    # Both freed by the worker (no lock left to expire on its own, no holder to take over).
    assert await backend.lock(f"unique:sem.fails:{tag}", "probe", 60) == "probe"
    assert await backend.lock(patient.key, "probe", 60) == "probe"
    assert sem.RUNS["patient", tag] == 0
