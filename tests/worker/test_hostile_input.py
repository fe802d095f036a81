"""Hostile and malformed input, written straight to the broker's keys: nothing stalls a worker.

Each defect of issue 13 has its regression test here, on Redis (and RabbitMQ where one
applies): a wrongly typed envelope field, a non-numeric stream entry field (idle and busy fetch
paths), a garbage member of the shared delayed set, a malformed AMQP header. Every bad message
is dead-lettered with a reason naming the field, one line is logged, and the good messages sent
with it all run. The last tests check the worker's own supervisor and a warm shutdown after all
of that (the "stopped" line, no "Task exception was never retrieved").
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiormq
import orjson
import pytest
import redis.asyncio as aioredis
from aiormq import spec

from aqueue import Aqueue, Worker
from aqueue.exceptions import DecodeError
from aqueue.transports import Broker, Delivery
from aqueue.transports.redis import RedisBroker, keys
from tests.workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)

# Wrongly typed envelope fields: each kills nothing, and its dead letter names the field.
BAD_FIELDS: list[tuple[str, Any]] = [
    ("expires", "soon"),
    ("ct", ["json"]),
    ("link", [1]),
    ("options", "x"),
    ("eta", {"at": 1}),
    ("priority", "9"),
    ("retries", -1),
    ("headers", [1, 2]),
    ("time_limit", 0),
    ("ignore_result", "yes"),
    ("reply_to", 5),
    ("parent_id", ["p"]),
    ("kwargs", [1]),
    ("args", "abc"),
    ("link_error", [{"args": []}]),
    ("options", {"chain": "next"}),
    ("options", {"chord": {"id": "g", "size": "3", "body": {"task": "t"}}}),
    ("body", 7),
    ("v", "one"),
]


def envelope(task_id: str, **fields: Any) -> bytes:
    """A task message of ``proj.add`` written by hand, as a producer in another language would."""
    env: dict[str, Any] = {"id": task_id, "task": "proj.add", "args": [1, 2]}
    env.update(fields)
    return orjson.dumps(env)


def make_app(broker: str | Broker, queue: str, backend: str | None = None) -> Aqueue:
    """An app with ``proj.add``; results on ``backend`` (default: the broker's URL)."""
    backend = backend or (broker if isinstance(broker, str) else broker.url)
    app = Aqueue("hostile", broker=broker, backend=backend, task_default_queue=queue)

    @app.task(name="proj.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"{redis_server}/0")
    yield client
    await client.aclose()


@pytest.fixture
async def app(redis_server: str, queue: str) -> AsyncIterator[Aqueue]:
    made = make_app(f"{redis_server}/0", queue)
    yield made
    await made.close()


async def good_calls(app: Aqueue, n: int) -> list[Any]:
    """Send ``n`` ordinary calls of ``proj.add``; their result handles."""
    return [await app.send_task("proj.add", (i, 1)) for i in range(n)]


async def dead_reasons(app: Aqueue, queue: str) -> list[str]:
    broker = await app.broker()
    return [d.reason for d in await broker.dead_letters(queue, 1000)]


# -- the envelope --------------------------------------------------------------------------


async def test_wrongly_typed_fields_are_dead_lettered_and_the_runners_carry_on(
    app: Aqueue, redis: aioredis.Redis, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13's first defect: five such messages at -c 5 used to leave 0 of 30 tasks run."""
    stream = keys.stream(queue, 0)
    for i, (field, value) in enumerate(BAD_FIELDS):
        await redis.xadd(stream, {"b": envelope(f"bad-{i}", **{field: value})})
    results = await good_calls(app, 30)

    with caplog.at_level(logging.ERROR, logger="aqueue"):
        async with Worker(app, concurrency=5) as worker:
            values = await asyncio.gather(*(r.get(timeout=20) for r in results))
            await worker.wait_processed(len(BAD_FIELDS) + 30)

    assert values == [i + 1 for i in range(30)]
    reasons = await dead_reasons(app, queue)
    assert len(reasons) == len(BAD_FIELDS)
    for i, (field, _) in enumerate(BAD_FIELDS):
        [reason] = [r for r in reasons if f"message bad-{i}:" in r]
        assert f"field '{field}" in reason, reason
    logged = [r for r in caplog.records if "dead-letter queue" in r.getMessage()]
    assert len(logged) == len(BAD_FIELDS)  # one line each


async def test_a_dead_lettered_envelope_still_answers_its_caller(
    app: Aqueue, redis: aioredis.Redis, queue: str
) -> None:
    """The id and task name were readable: whoever waits on the id gets a failure, not PENDING."""
    await redis.xadd(keys.stream(queue, 0), {"b": envelope("soon-id", expires="soon")})
    async with Worker(app, concurrency=2) as worker:
        await worker.wait_processed(1)
    with pytest.raises(DecodeError, match="field 'expires'"):
        await app.AsyncResult("soon-id").get(timeout=5)


# -- Redis stream entry fields ----------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("n", "abc"), ("n", "0"), ("k", "-1"), ("n", "")])
async def test_non_numeric_stream_field_while_busy(
    app: Aqueue, redis: aioredis.Redis, queue: str, field: str, value: str
) -> None:
    """Entries waiting before the worker starts are read by the fetch script (the busy path),
    where a nil used to cut the script's reply short."""
    stream = keys.stream(queue, 0)
    results = await good_calls(app, 10)
    await redis.xadd(stream, {"b": envelope("odd"), field: value})
    results += await good_calls(app, 10)

    async with Worker(app, concurrency=4) as worker:
        values = await asyncio.gather(*(r.get(timeout=20) for r in results))
        await worker.wait_processed(21 if value else 20)

    assert len(values) == 20
    reasons = await dead_reasons(app, queue)
    if value == "":  # an empty field is an absent one: the message simply runs
        assert reasons == []
        assert await app.AsyncResult("odd").get(timeout=5) == 3
    else:
        assert len(reasons) == 1 and f"stream entry field '{field}'" in reasons[0], reasons


async def test_non_numeric_stream_field_while_idle(
    app: Aqueue, redis: aioredis.Redis, queue: str
) -> None:
    """An entry added while the worker waits in XREADGROUP BLOCK (the idle path, int() used to
    raise there and end the fetch loop)."""
    async with Worker(app, concurrency=4) as worker:
        assert await (await app.send_task("proj.add", (1, 1))).get(timeout=10) == 2
        await redis.xadd(keys.stream(queue, 0), {"b": envelope("odd"), "n": "abc"})
        await worker.wait_processed(2)
        assert await (await app.send_task("proj.add", (2, 2))).get(timeout=10) == 4
    [reason] = await dead_reasons(app, queue)
    assert "stream entry field 'n'" in reason


async def test_entry_without_a_body_is_dead_lettered(
    app: Aqueue, redis: aioredis.Redis, queue: str
) -> None:
    await redis.xadd(keys.stream(queue, 0), {"x": "y"})
    async with Worker(app, concurrency=2) as worker:
        await worker.wait_processed(1)
        assert await (await app.send_task("proj.add", (1, 1))).get(timeout=10) == 2
    [reason] = await dead_reasons(app, queue)
    assert "undecodable" in reason


# -- the delayed set -------------------------------------------------------------------------


async def test_a_bad_member_of_the_delayed_set_is_set_aside(
    app: Aqueue, redis: aioredis.Redis, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One garbage member used to make the fetch script fail on every run, for every consumer."""
    wrong_type = keys.stream(f"{queue}-other", 3)  # another queue's stream...
    await redis.set(wrong_type, "not a stream")  # ...that is not one: XADD to it fails
    members = [
        b"garbage",
        b"5:hello3:abc{}",  # names a key that is not a queue stream
        b"99999999999:x",  # a length far past the member's end
        b"%d:%s3:abc{}" % (len(wrong_type), wrong_type.encode()),
    ]
    await redis.zadd(keys.delayed(), dict.fromkeys(members, 0))
    later = [await app.send_task("proj.add", (i, i), countdown=0.2) for i in range(5)]
    now = await good_calls(app, 5)
    try:
        with caplog.at_level(logging.ERROR, logger="aqueue"):
            async with Worker(app, concurrency=4):
                values = await asyncio.gather(*(r.get(timeout=20) for r in later + now))
    finally:
        await redis.delete(wrong_type)

    assert values == [2 * i for i in range(5)] + [i + 1 for i in range(5)]
    assert await redis.zscore(keys.delayed(), b"garbage") is None
    aside = await redis.xrange(keys.delayed_rejected())
    assert set(members) <= {fields[b"m"] for _, fields in aside}
    logged = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(logged) >= len(members)


# -- the worker's loops ----------------------------------------------------------------------


class FlakyFetch(RedisBroker):
    """A real Redis broker whose fetch fails ``times`` times with a bug (not a broker error)."""

    def __init__(self, *args: Any, times: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.left = times
        self.failed = asyncio.Event()

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        if self.left:
            self.left -= 1
            self.failed.set()
            raise RuntimeError("a bug in fetch")
        return await super().fetch(queues, limit, timeout)


async def test_a_crashed_fetch_loop_is_restarted_and_logged(
    redis_server: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{redis_server}/0"
    broker = FlakyFetch(url, {}, times=2)
    app = make_app(broker, queue)
    try:
        with caplog.at_level(logging.ERROR, logger="aqueue"):
            async with Worker(app, concurrency=2):
                assert broker.failed.is_set() or await broker.failed.wait() is True
                assert await (await app.send_task("proj.add", (3, 4))).get(timeout=10) == 7
    finally:
        await app.close()
        await broker.close()
    crashes = [r for r in caplog.records if "internal task fetcher crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert all(r.exc_info is not None for r in crashes)  # with the traceback


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_warm_shutdown_after_hostile_input_logs_stopped(
    redis_server: str, redis: aioredis.Redis, queue: str
) -> None:
    """A real worker process: hostile entries, then SIGTERM ends in "stopped", exit code 0."""
    url = f"{redis_server}/0"
    producer = make_app(url, queue)
    env = {"AQUEUE_BROKER_URL": url, "AQUEUE_E2E_QUEUE": queue}
    try:
        async with WorkerProcess("tests.apps.tasks:app", ["-c", "4"], env) as worker:
            stream = keys.stream(queue, 0)
            await redis.xadd(stream, {"b": envelope("x1", expires="soon")})
            await redis.xadd(stream, {"b": envelope("x2"), "n": "abc"})
            await redis.zadd(keys.delayed(), {b"garbage-" + queue.encode(): 0})
            result = await producer.send_task("e2e.add", (20, 22))
            assert await result.get(timeout=20) == 42
            worker.signal(signal.SIGTERM)
            assert await worker.wait() == 0
    finally:
        await producer.close()
    log = "\n".join(worker.lines)
    assert "stopped" in log
    assert "never retrieved" not in log
    assert "field 'expires'" in log and "stream entry field 'n'" in log


# -- RabbitMQ --------------------------------------------------------------------------------


@pytest.fixture
async def amqp_app(rabbitmq_server: Any, redis_server: str, queue: str) -> AsyncIterator[Aqueue]:
    made = make_app(rabbitmq_server.url, queue, backend=f"{redis_server}/0")
    yield made
    await made.close()


async def publish_raw(url: str, queue: str, body: bytes, headers: dict[str, Any]) -> None:
    """Publish straight to ``queue`` with aiormq, as another client could."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.basic_publish(
            body,
            routing_key=queue,
            properties=spec.Basic.Properties(delivery_mode=2, headers=headers or None),
        )
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "headers",
    [{"aqueue-deliveries": "abc"}, {"aqueue-eta": "tomorrow"}, {"aqueue-deliveries": -3}],
)
async def test_malformed_amqp_header_is_dead_lettered(
    amqp_app: Aqueue, rabbitmq_server: Any, queue: str, headers: dict[str, Any]
) -> None:
    async with Worker(amqp_app, concurrency=2) as worker:
        assert await (await amqp_app.send_task("proj.add", (1, 1))).get(timeout=20) == 2
        await publish_raw(rabbitmq_server.url, queue, envelope("h1"), headers)
        await worker.wait_processed(2)
        assert await (await amqp_app.send_task("proj.add", (2, 2))).get(timeout=20) == 4
    [reason] = await dead_reasons(amqp_app, queue)
    assert f"AMQP header '{next(iter(headers))}'" in reason


async def test_wrongly_typed_field_over_amqp(
    amqp_app: Aqueue, rabbitmq_server: Any, queue: str
) -> None:
    async with Worker(amqp_app, concurrency=2) as worker:
        assert await (await amqp_app.send_task("proj.add", (1, 1))).get(timeout=20) == 2
        await publish_raw(rabbitmq_server.url, queue, envelope("t1", link=[1]), {})
        await worker.wait_processed(2)
        assert await (await amqp_app.send_task("proj.add", (2, 2))).get(timeout=20) == 4
    [reason] = await dead_reasons(amqp_app, queue)
    assert "field 'link'" in reason
