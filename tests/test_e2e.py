"""End to end, in one process: a producer and a real Worker on every transport."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from aqueue import Worker
from aqueue.exceptions import (
    ConfigurationError,
    ContentDisallowed,
    EncodeError,
    TaskError,
    TaskNotRegistered,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
)
from aqueue.transports import Outgoing, RunTracking
from tests.apps import tasks as e2e
from tests.apps.tasks import QuotaError, Tasks


async def test_async_task_result(t: Tasks, worker: Worker) -> None:
    r = await t.add.delay(4, 4)
    assert await r.get(timeout=10) == 8
    assert await r.ready()
    assert await r.successful()
    assert await r.state() == "SUCCESS"
    assert r.result == 8


async def test_await_result_directly(t: Tasks, worker: Worker) -> None:
    assert await (await t.add.delay(2, 2)) == 4


async def test_sync_task_runs_in_a_thread(t: Tasks, worker: Worker) -> None:
    assert await (await t.mul.delay(6, 7)) == 42


async def test_bound_task_sees_its_request(t: Tasks, worker: Worker) -> None:
    r = await t.echo_request.apply_async((1, 2), {"k": "v"})
    got = await r.get(timeout=10)
    assert got["id"] == r.id
    assert got["task"] == "e2e.echo_request"
    assert got["args"] == [1, 2] and got["kwargs"] == {"k": "v"}
    assert got["queue"] == t.app.conf.task_default_queue
    assert got["hostname"] == worker.hostname


async def test_send_task_by_name(t: Tasks, worker: Worker) -> None:
    r = await t.app.send_task("e2e.add", args=(1, 1))
    assert await r.get(timeout=10) == 2


async def test_custom_progress_state_reaches_on_message(t: Tasks, worker: Worker) -> None:
    seen: list[dict[str, Any]] = []
    r = await t.progress.delay(3)
    assert await r.get(timeout=10, on_message=seen.append) == "done"
    progress = [m["result"] for m in seen if m["status"] == "PROGRESS"]
    # Updates may coalesce when the client reads late, but the last one is always seen in order.
    assert progress, seen
    assert progress[-1] == {"current": 3, "total": 3}
    assert [p["current"] for p in progress] == sorted(p["current"] for p in progress)
    assert seen[-1]["status"] == "SUCCESS"


async def test_retry_with_countdown_then_success(t: Tasks, worker: Worker) -> None:
    r = await t.flaky.delay(2)
    assert await r.get(timeout=10) == 2
    assert (await r.info()).retries == 2


async def test_retry_gives_up_after_max_retries(t: Tasks, worker: Worker) -> None:
    r = await t.flaky.delay(10)
    with pytest.raises(OSError, match="transient"):
        await r.get(timeout=10)
    assert (await r.info()).retries == 3


async def test_autoretry_with_backoff_then_failure(t: Tasks, worker: Worker) -> None:
    r = await t.backoff.delay()
    with pytest.raises(OSError, match="attempt 2"):
        await r.get(timeout=10)


async def test_failure_reraises_same_type_with_traceback(t: Tasks, worker: Worker) -> None:
    r = await t.always_fails.delay("broken")
    with pytest.raises(ValueError, match="broken"):
        await r.get(timeout=10)
    assert await r.failed()
    assert "ValueError: broken" in (r.traceback or "")
    exc = await r.get(timeout=1, propagate=False)
    assert isinstance(exc, ValueError)


async def test_custom_exception_type_is_rebuilt(t: Tasks, worker: Worker) -> None:
    with pytest.raises(QuotaError, match="over quota"):
        await (await t.quota.delay())


async def test_time_limit_cancels_the_task(t: Tasks, worker: Worker) -> None:
    r = await t.slow.delay(5)
    with pytest.raises(TimeLimitExceeded):
        await r.get(timeout=10)


async def test_get_timeout_raises_timeout_error(t: Tasks) -> None:
    r = await t.add.delay(1, 1)  # no worker: it never finishes
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        await r.get(timeout=0.3)
    assert isinstance(info.value, builtins_timeout_error())
    assert time.monotonic() - started >= 0.29
    assert await r.state() == "PENDING"


def builtins_timeout_error() -> type[BaseException]:
    import builtins

    return builtins.TimeoutError


async def test_ignore_result_stores_nothing(t: Tasks, worker: Worker) -> None:
    r = await t.add.apply_async((1, 2), ignore_result=True)
    marker = await t.add.delay(0, 0)  # same queue, FIFO: done after the first one
    assert await marker.get(timeout=10) == 0
    assert await r.state() == "PENDING"


async def test_hooks_sync_and_async(t: Tasks, worker: Worker) -> None:
    ok = await t.hooked.delay(5)
    assert await ok.get(timeout=10) == 5
    bad = await t.hooked_fail.delay()
    with pytest.raises(KeyError):
        await bad.get(timeout=10)
    async with asyncio.timeout(10):
        assert await e2e.returned(ok.id) == ["on_success", "after_return:SUCCESS"]
        assert await e2e.returned(bad.id) == ["on_failure", "after_return:FAILURE"]


async def test_expired_message_is_revoked_not_run(t: Tasks, worker: Worker) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    r = await t.add.apply_async((1, 1), expires=past)
    with pytest.raises(TaskRevokedError, match="expired"):
        await r.get(timeout=10)
    assert await r.state() == "REVOKED"


async def test_countdown_delays_the_run(t: Tasks, worker: Worker) -> None:
    sent = time.time()
    r = await t.echo_request.apply_async(countdown=0.6)
    await r.get(timeout=10)
    info = await r.info()
    assert info.date_done is not None
    assert info.date_done.timestamp() - sent >= 0.55


async def test_eta_in_the_future(t: Tasks, worker: Worker) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=0.5)
    r = await t.add.apply_async((3, 3), eta=eta)
    assert await r.get(timeout=10) == 6
    info = await r.info()
    assert info.date_done is not None and info.date_done >= eta - timedelta(milliseconds=50)


async def test_priority_nine_runs_first(t: Tasks) -> None:
    e2e.ORDER.clear()
    tag = uuid.uuid4().hex
    low = [await t.record_order.apply_async((f"{tag}-low-{i}",), priority=0) for i in range(3)]
    high = await t.record_order.apply_async((f"{tag}-high",), priority=9)
    async with Worker(t.app, concurrency=1, prefetch_multiplier=1):
        for r in [*low, high]:
            await r.get(timeout=10)
    mine = [x for x in e2e.ORDER if x.startswith(tag)]
    assert mine[0] == f"{tag}-high", mine


async def test_link_gets_the_parent_result(t: Tasks, worker: Worker) -> None:
    task_id = str(uuid.uuid4())
    child_id = str(uuid.uuid4())
    await t.add.apply_async((2, 3), task_id=task_id, link=t.add.s(10).set(task_id=child_id))
    child = t.app.AsyncResult(child_id)
    assert await child.get(timeout=10) == 15


async def test_link_error_calls_errback_with_request_exc_traceback(
    t: Tasks, worker: Worker
) -> None:
    r = await t.always_fails.apply_async(("bad",), link_error=t.errback.s())
    with pytest.raises(ValueError):
        await r.get(timeout=10)
    for _ in range(100):
        if any(task_id == r.id for task_id, _ in e2e.ERRBACKS):
            break
        await asyncio.sleep(0.01)  # the errback runs just after the failure is stored
    assert (r.id, "ValueError('bad')") in e2e.ERRBACKS


async def test_then_calls_on_done_with_the_result(t: Tasks, worker: Worker) -> None:
    r = await t.add.delay(20, 22)
    value = await r.then(lambda res: res.result + 1)

    async def on_error(res: Any) -> str:
        return "unused"

    assert value == 43
    failed = await t.always_fails.delay("x")
    errors: list[str] = []
    assert await failed.then(lambda res: "no", on_error=lambda res: errors.append(res.id)) is None
    assert errors == [failed.id]


async def test_forget_and_info(t: Tasks, worker: Worker) -> None:
    r = await t.add.delay(1, 2)
    assert await r == 3
    info = await r.info()
    assert (info.state, info.result, info.retries) == ("SUCCESS", 3, 0)
    await r.forget()
    assert await r.state() == "PENDING"


async def test_msgpack_and_zlib(transport_url: str) -> None:
    t = e2e.build(
        transport_url,
        queue=f"q-{uuid.uuid4().hex[:12]}",
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["json", "msgpack"],
        task_compression="zlib",
    )
    async with Worker(t.app, concurrency=2):
        assert await (await t.add.delay(b"ab".decode(), "cd")) == "abcd"
    await t.app.close()


async def test_pickle_is_refused_unless_accepted(t: Tasks, worker: Worker) -> None:
    r = await t.add.apply_async((1, 2), serializer="pickle")
    with pytest.raises(ContentDisallowed):
        await r.get(timeout=10)
    await asyncio.wait_for(worker.wait_processed(1), 10)  # the failure is stored, then DLQ'd
    [dead] = await (await t.app.broker()).dead_letters(t.app.conf.task_default_queue)
    assert "accept_content" in dead.reason


async def test_unknown_task_goes_to_dlq_and_fails(t: Tasks, worker: Worker) -> None:
    r = await t.app.send_task("e2e.does_not_exist", args=(1,))
    with pytest.raises(TaskNotRegistered):
        await r.get(timeout=10)
    after = await t.add.delay(1, 1)
    assert await after.get(timeout=10) == 2
    await asyncio.wait_for(worker.wait_processed(2), 10)
    dead = await (await t.app.broker()).dead_letters(t.app.conf.task_default_queue)
    assert len(dead) == 1 and "unknown task" in dead[0].reason


async def test_bad_arguments_go_to_dlq(t: Tasks, worker: Worker) -> None:
    t.add.typing = False  # a client that skips the send-time check (tests/test_send_checks.py)
    r = await t.add.apply_async((1, 2, 3))
    with pytest.raises(TypeError, match="arguments do not fit"):
        await r.get(timeout=10)
    await asyncio.wait_for(worker.wait_processed(1), 10)
    dead = await (await t.app.broker()).dead_letters(t.app.conf.task_default_queue)
    assert [d.reason.split(":")[0] for d in dead] == ["arguments do not fit e2e.add"]


async def test_unserialisable_result_goes_to_dlq(t: Tasks, worker: Worker) -> None:
    r = await t.unserialisable.delay()
    with pytest.raises(EncodeError, match="not serialisable"):
        await r.get(timeout=10)
    await asyncio.wait_for(worker.wait_processed(1), 10)
    dead = await (await t.app.broker()).dead_letters(t.app.conf.task_default_queue)
    assert len(dead) == 1 and "result is not serialisable" in dead[0].reason


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xffnot json",
        b"[1, 2]",
        orjson.dumps({"id": "x"}),
        b'{"id": "y", "task": "e2e.add", "ct": "json", "args": "nope"}',
    ],
    ids=["binary", "not-an-object", "no-task", "args-not-a-list"],
)
async def test_garbage_message_goes_to_dlq_and_next_task_completes(
    t: Tasks, worker: Worker, garbage: bytes
) -> None:
    queue = t.app.conf.task_default_queue
    broker = await t.app.broker()
    await broker.publish([Outgoing(queue, garbage, "garbage")])
    r = await t.add.delay(2, 2)
    assert await r.get(timeout=10) == 4
    await asyncio.wait_for(worker.wait_processed(2), 10)
    dead = await broker.dead_letters(queue)
    assert [d.body for d in dead] == [garbage]
    assert dead[0].reason.startswith("undecodable message")


async def test_worker_stop_releases_unstarted_messages(t: Tasks) -> None:
    results = [await t.add.delay(i, i) for i in range(20)]
    async with Worker(t.app, concurrency=1, prefetch_multiplier=20) as w:
        pass  # stopped at once: whatever it leased and did not start goes back
    assert w.processed < 20 or all([await r.ready() for r in results])
    async with Worker(t.app, concurrency=5):
        assert [await r.get(timeout=10) for r in results] == [2 * i for i in range(20)]


async def test_priority_out_of_range_is_a_configuration_error(t: Tasks) -> None:
    with pytest.raises(ConfigurationError, match="priority"):
        await t.add.apply_async((1, 1), priority=10)


async def test_unimportable_exception_becomes_task_error(t: Tasks, worker: Worker) -> None:
    from aqueue.results.record import ResultRecord

    backend = await t.app.result_backend()
    task_id = str(uuid.uuid4())
    record = ResultRecord(
        task_id,
        "FAILURE",
        {"exc_type": "Gone", "exc_module": "nowhere.mod", "exc_message": "vanished"},
        "tb text",
        time.time(),
    )
    await backend.store([(task_id, record.encode())], 60)
    with pytest.raises(TaskError) as info:
        await t.app.AsyncResult(task_id).get(timeout=5)
    assert info.value.exc_type == "nowhere.mod.Gone"
    assert info.value.exc_message == "vanished"
    assert info.value.remote_traceback == "tb text"


async def test_poison_message_goes_to_dlq_after_the_delivery_cap(transport_url: str) -> None:
    if transport_url.startswith("amqp"):
        pytest.skip("AMQP has no lease timer; test_amqp.py kills the holder's connection instead")
    queue = f"q-{uuid.uuid4().hex[:12]}"
    t = e2e.build(
        transport_url,
        queue=queue,
        task_max_deliveries=2,
        broker_transport_options={"visibility_timeout": 0.3},
    )
    r = await t.add.delay(1, 1)
    broker = await t.app.broker()
    assert isinstance(broker, RunTracking)
    for expected in ((1, 0), (2, 1)):  # a worker that dies running it alone, twice
        [d] = await broker.fetch([queue], 1, 5)
        assert (d.delivery_count, d.strikes) == expected
        assert await broker.start([(d, True)]) == [True]
        await asyncio.sleep(0.35)  # let the lease run out
    async with Worker(t.app, concurrency=2):
        with pytest.raises(Exception, match="more than task_max_deliveries=2"):
            await r.get(timeout=10)
        assert await (await t.add.delay(2, 2)).get(timeout=10) == 4
    [dead] = await broker.dead_letters(queue)
    assert "poison" in dead.reason
    await t.app.close()


async def test_long_task_keeps_its_lease_while_running(transport_url: str, tmp_path: Any) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    opts = {"broker_transport_options": {"visibility_timeout": 0.4}}
    a = e2e.build(transport_url, queue=queue, **opts)
    b = a if transport_url.startswith("memory") else e2e.build(transport_url, queue=queue, **opts)
    marks = tmp_path / "marks"
    marks.mkdir()
    r = await a.sleep_then_mark.delay(1.5, str(marks), "long")
    async with Worker(a.app, concurrency=2), Worker(b.app, concurrency=2):
        assert await r.get(timeout=10) == "long"
        # Both workers stayed up well past the lease: only a renewal kept the other one off it.
        assert await (await a.add.delay(1, 1)).get(timeout=10) == 2
    assert len(list(marks.iterdir())) == 1
    await a.app.close()
    await b.app.close()


async def test_concurrency_bounds_tasks_in_flight(t: Tasks) -> None:
    e2e.RUNNING.update(now=0, peak=0)
    results = [await t.track_concurrency.delay(0.1) for _ in range(30)]
    async with Worker(t.app, concurrency=7):
        await asyncio.gather(*(r.get(timeout=10) for r in results))
    assert e2e.RUNNING["peak"] == 7


async def test_worker_survives_dropped_redis_connections(redis_server: str) -> None:
    import redis.asyncio as aioredis

    t = e2e.build(f"{redis_server}/0", queue=f"q-{uuid.uuid4().hex[:12]}")
    admin = aioredis.Redis.from_url(redis_server)
    async with Worker(t.app, concurrency=4):
        assert await (await t.add.delay(1, 1)).get(timeout=10) == 2
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        results = [await t.add.delay(i, 1) for i in range(10)]
        assert [await r.get(timeout=20) for r in results] == [i + 1 for i in range(10)]
    await admin.aclose()
    await t.app.close()


async def test_a_forgotten_result_reads_pending_from_any_handle(t: Tasks, worker: Worker) -> None:
    r = await t.add.delay(1, 2)
    assert await r == 3
    other = t.app.AsyncResult(r.id)
    assert await other.state() == "SUCCESS"
    await r.forget()
    assert await other.state() == "PENDING"


# -- the bulk path and reply channels -------------------------------------------------------


async def test_delay_many_sends_every_call_and_each_result_comes_back(
    t: Tasks, worker: Worker
) -> None:
    results = await t.add.delay_many((i, i) for i in range(50))
    assert len({r.id for r in results}) == 50
    assert [await r.get(timeout=10) for r in results] == [2 * i for i in range(50)]
    more = await t.app.send_many("e2e.add", [(1, 2), (3, 4)], priority=5)
    assert [await r.get(timeout=10) for r in more] == [3, 7]


async def test_send_many_sends_nothing_when_one_call_is_bad(t: Tasks) -> None:
    with pytest.raises(TypeError):
        await t.add.delay_many([(1, 2), (1, 2, 3)])
    with pytest.raises(ConfigurationError, match="task_id"):
        await t.add.delay_many([(1, 2)], task_id="fixed")
    broker = await t.app.broker()
    assert await broker.fetch([t.app.conf.task_default_queue], 10, 0.1) == []


async def test_result_of_a_sent_task_is_seen_by_another_client(
    t: Tasks, worker: Worker, transport_url: str
) -> None:
    if transport_url.startswith("memory"):
        pytest.skip("a memory backend is one process's own")
    r = await t.add.delay(20, 22)
    other = e2e.build(transport_url, queue=t.app.conf.task_default_queue)
    try:
        assert await other.app.AsyncResult(r.id).get(timeout=10) == 42
        assert await r.get(timeout=10) == 42
    finally:
        await other.app.close()


async def test_a_watcher_in_another_client_gets_records_sent_to_a_reply_channel(
    t: Tasks, worker: Worker, transport_url: str
) -> None:
    if transport_url.startswith("memory"):
        pytest.skip("a memory backend is one process's own")
    other = e2e.build(transport_url, queue=t.app.conf.task_default_queue)
    task_id = str(uuid.uuid4())
    try:
        backend = await other.app.result_backend()
        async with backend.watch(task_id) as updates:
            r = await t.add.apply_async((20, 22), task_id=task_id)  # its sender awaits it too
            raw = await asyncio.wait_for(updates.get(), 10)
        assert orjson.loads(raw)["status"] == "SUCCESS"
        assert await r.get(timeout=10) == 42
    finally:
        await other.app.close()
