"""Property-based tests (Hypothesis): generated envelopes and broker records thrown at the
decoding edge and at a real worker on every transport.

The properties: :func:`aqueue.message.decode` either returns a message whose every field has
its declared type, or raises :class:`DecodeError` naming a field it was given wrong; and a
worker fed a generated mix of bad and good messages never stalls - every bad one is
dead-lettered with a reason, every good one interleaved with them runs. Broker records are
corrupted too: Redis stream entry fields and delayed-set members, SQLite columns, AMQP headers.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import sqlite3
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

import aiormq
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiormq import spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aqueue import Aqueue, Worker
from aqueue.exceptions import ContentDisallowed, DecodeError
from aqueue.message import Message, decode
from aqueue.transports import Outgoing
from aqueue.transports.redis import keys

# -- strategies ------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # JSON-encodable
INT64 = st.integers(-(2**63), 2**63 - 1)  # what JSON (orjson) carries
FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # orjson writes those as null
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | FLOATS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
LISTS = st.lists(JSON, max_size=3)
OBJECTS = st.dictionaries(TEXT, JSON, max_size=3)
# Values of every JSON type but one (and never null, which stands for "absent").
NOT_TEXT = st.booleans() | INT64 | FLOATS | LISTS | OBJECTS
NOT_NUMBER = st.booleans() | TEXT | LISTS | OBJECTS
NOT_OBJECT = st.booleans() | INT64 | FLOATS | TEXT | LISTS
NOT_LIST = st.booleans() | INT64 | FLOATS | TEXT | OBJECTS
NOT_FLAG = INT64 | FLOATS | TEXT | LISTS | OBJECTS


def _bad_whole(low: int, high: int) -> st.SearchStrategy[Any]:
    """Anything but a whole number in ``low..high`` (or null)."""
    too_low, too_high = st.integers(-(2**63), low - 1), st.integers(high + 1, 2**63 - 1)
    return (
        too_low
        | too_high
        | NOT_NUMBER
        | (st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()))
    )


# Per envelope field: values of the wrong type (never a valid one, so each must be refused).
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "id": NOT_TEXT,
    "task": NOT_TEXT,
    "ct": NOT_TEXT,
    "enc": NOT_TEXT,
    "v": _bad_whole(1, 2**31),
    "queue": NOT_TEXT,
    "priority": _bad_whole(0, 255),
    "retries": _bad_whole(0, 2**31),
    "eta": NOT_NUMBER,
    "expires": NOT_NUMBER,
    "time_limit": NOT_NUMBER | st.integers(-(2**63), 0),
    "ignore_result": NOT_FLAG,
    "headers": NOT_OBJECT,
    "options": NOT_OBJECT,
    "link": NOT_LIST | st.lists(NOT_OBJECT, min_size=1, max_size=2),
    "link_error": NOT_LIST | st.lists(st.just({"args": []}), min_size=1, max_size=1),
    "parent_id": NOT_TEXT,
    "root_id": NOT_TEXT,
    "group_id": NOT_TEXT,
    "reply_to": NOT_TEXT,
    "args": NOT_LIST,
    "kwargs": NOT_OBJECT | st.just([1]),
    "body": NOT_TEXT | st.just("not base64!"),
}


@st.composite
def bad_envelope(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """A ``proj.add`` envelope with one to three fields of the wrong type; the names."""
    env: dict[str, Any] = {"id": str(uuid.uuid4()), "task": "proj.add", "args": [1, 2]}
    names = draw(st.sets(st.sampled_from(sorted(WRONG)), min_size=1, max_size=3))
    for name in names:
        env[name] = draw(WRONG[name])
    return orjson.dumps(env), names


@st.composite
def message_mix(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Bad envelopes, garbage bytes and good calls, interleaved: ``("good", (x, y))``,
    ``("bad", body)``."""
    items: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        items.append(("bad", draw(bad_envelope())[0]))
    for _ in range(draw(st.integers(0, 2))):
        items.append(("bad", draw(st.binary(max_size=30))))
    for _ in range(draw(st.integers(1, 6))):
        items.append(("good", (draw(st.integers(-1000, 1000)), draw(st.integers(-1000, 1000)))))
    return draw(st.permutations(items))


SETTINGS = settings(
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- the decoding edge -----------------------------------------------------------------------


@SETTINGS
@given(bad_envelope())
def test_decode_refuses_a_wrong_field_by_name(case: tuple[bytes, set[str]]) -> None:
    raw, names = case
    with pytest.raises((DecodeError, ContentDisallowed)) as info:
        decode(raw, frozenset({"json"}))
    text = str(info.value)
    if isinstance(info.value, DecodeError):
        assert any(f"field '{name}" in text for name in names), (text, names)


@SETTINGS
@given(st.dictionaries(st.sampled_from([*WRONG, "x"]), JSON, max_size=8) | JSON)
def test_decode_of_anything_is_typed_or_refused(env: Any) -> None:
    """Whatever JSON comes in: a Message with typed fields, or DecodeError (nothing else)."""
    try:
        msg = decode(orjson.dumps(env), frozenset({"json"}))
    except (DecodeError, ContentDisallowed):
        return
    assert_typed(msg)


# Typed values (datetime, bytes, sets... tagged in the JSON), well-formed or not.
TAGGED = st.fixed_dictionaries(
    {
        "__type__": st.sampled_from(["datetime", "bytes", "set", "dict", "int", "uuid"]) | TEXT,
        "__value__": JSON,
    }
)


@SETTINGS
@given(st.lists(TAGGED, min_size=1, max_size=3), st.sampled_from(["args", "kwargs", "headers"]))
def test_decode_of_typed_values_is_typed_or_refused(values: list[Any], field: str) -> None:
    env: dict[str, Any] = {"id": "t", "task": "proj.add"}
    env[field] = values if field == "args" else {"k": values}
    try:
        msg = decode(orjson.dumps(env), frozenset({"json"}))
    except (DecodeError, ContentDisallowed):
        return
    assert_typed(msg)


@SETTINGS
@given(st.binary(max_size=200))
def test_decode_of_any_bytes_is_typed_or_refused(raw: bytes) -> None:
    try:
        msg = decode(raw, frozenset({"json"}))
    except (DecodeError, ContentDisallowed):
        return
    assert_typed(msg)


def assert_typed(msg: Message) -> None:
    assert isinstance(msg.id, str) and isinstance(msg.task, str)
    assert isinstance(msg.args, tuple)
    assert isinstance(msg.kwargs, dict) and all(isinstance(k, str) for k in msg.kwargs)
    assert isinstance(msg.queue, str)
    assert type(msg.priority) is int and 0 <= msg.priority <= 255
    assert type(msg.retries) is int and msg.retries >= 0
    for t in (msg.eta, msg.expires):
        assert t is None or (type(t) is float and math.isfinite(t))
    assert msg.time_limit is None or msg.time_limit > 0
    assert type(msg.ignore_result) is bool
    assert isinstance(msg.headers, dict) and isinstance(msg.options, dict)
    assert all(isinstance(s, dict) and isinstance(s["task"], str) for s in msg.link)
    assert all(isinstance(s, dict) and isinstance(s["task"], str) for s in msg.link_error)
    for value in (msg.parent_id, msg.root_id, msg.group_id, msg.reply_to):
        assert value is None or isinstance(value, str)


def test_decode_names_a_body_that_does_not_decode() -> None:
    raw = orjson.dumps({"id": "b", "task": "t", "body": base64.b64encode(b"{nope").decode()})
    with pytest.raises(DecodeError, match="field 'body'"):
        decode(raw, frozenset({"json"}))


# -- a real worker on every transport ----------------------------------------------------------

Corrupt = Callable[[str, str], Awaitable[int]]  # (url, queue) -> bad records written


def good_call() -> bytes:
    """A sound ``proj.add(1, 1)`` envelope: a record around it is what is corrupted."""
    return orjson.dumps({"id": str(uuid.uuid4()), "task": "proj.add", "args": [1, 1]})


def make_app(url: str, queue: str, backend: str) -> Aqueue:
    app = Aqueue("props", broker=url, backend=backend, task_default_queue=queue)

    @app.task(name="proj.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


async def feed(
    url: str, backend: str, mix: list[tuple[str, Any]], corrupt: Corrupt | None = None
) -> None:
    """Publish ``mix`` (plus what ``corrupt`` writes to the broker's own records) to a fresh
    queue, run a worker until every message is handled, and check the outcome."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    app = make_app(url, queue, backend)
    try:
        broker = await app.broker()
        good: dict[str, int] = {}
        batch = []
        for kind, item in mix:
            task_id = str(uuid.uuid4())
            if kind == "good":
                body = orjson.dumps({"id": task_id, "task": "proj.add", "args": list(item)})
                good[task_id] = item[0] + item[1]
            else:
                body = item
            batch.append(Outgoing(queue, body, task_id))
        await broker.publish(batch)
        bad = len(mix) - len(good)
        async with Worker(app, concurrency=4, shutdown_timeout=5) as worker:
            bad += await corrupt(url, queue) if corrupt is not None else 0
            await asyncio.wait_for(worker.wait_processed(len(good) + bad), 30)
            for task_id, value in good.items():
                assert await app.AsyncResult(task_id).get(timeout=10) == value
            # One more, delayed: moving it takes a fetch script run, which handles whatever
            # the delayed set held before it (due at once) too.
            last = await app.send_task("proj.add", (1, 1), countdown=0.01)
            assert await last.get(timeout=10) == 2
        dead = await broker.dead_letters(queue, 1000)
        assert len(dead) == bad, [d.reason for d in dead]
        assert all(d.reason for d in dead)
    finally:
        await app.close()


@pytest.mark.timeout(300)
@settings(SETTINGS, max_examples=15)
@given(mix=message_mix())
def test_memory_worker_never_stalls(mix: list[tuple[str, Any]]) -> None:
    asyncio.run(feed("memory://", "memory://", mix))


# A wrong value per column of a message row, as another program could write with sqlite3.
ROW_DEFECTS: dict[str, Any] = {"body": 12.5, "delivery_count": "x", "strikes": -1}


@pytest.mark.timeout(300)
@settings(SETTINGS, max_examples=10)
@given(mix=message_mix(), columns=st.lists(st.sampled_from(sorted(ROW_DEFECTS)), max_size=3))
def test_sqlite_worker_never_stalls(mix: list[tuple[str, Any]], columns: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="aqueue-props-") as directory:
        url = f"sqlite:///{directory}/props.db"
        asyncio.run(feed(url, url, mix, _sqlite_rows(columns)))


def _sqlite_rows(columns: list[str]) -> Corrupt:
    """Rows of good ``proj.add`` calls written with sqlite3 itself, one column wrong each."""

    async def corrupt(url: str, queue: str) -> int:
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
            for column in columns:
                row: dict[str, Any] = {"body": good_call(), "delivery_count": 0}
                row["strikes"] = 0
                row[column] = ROW_DEFECTS[column]
                conn.execute(
                    "INSERT INTO messages (queue, priority, body, visible_at, message_id,"
                    " delivery_count, strikes) VALUES (?, 0, ?, 0, 'm', ?, ?)",
                    (queue, row["body"], row["delivery_count"], row["strikes"]),
                )
        return len(columns)

    return corrupt


@pytest.mark.timeout(300)
@settings(SETTINGS, max_examples=10)
@given(
    mix=message_mix(),
    fields=st.lists(st.tuples(st.sampled_from(["n", "k"]), TEXT), max_size=3),
    members=st.lists(st.binary(min_size=1, max_size=40), max_size=3),
)
def test_redis_worker_never_stalls(
    redis_server: str,
    mix: list[tuple[str, Any]],
    fields: list[tuple[str, str]],
    members: list[bytes],
) -> None:
    url = f"{redis_server}/0"
    asyncio.run(feed(url, url, mix, _redis_records(fields, members)))
    with closing(redis.Redis.from_url(url)) as client:  # every garbage member was set aside
        assert all(client.zscore(keys.delayed(), b"x" + m) is None for m in members)


def _redis_records(fields: list[tuple[str, str]], members: list[bytes]) -> Corrupt:
    """Stream entries with a field n or k that is not a count, and garbage delayed members
    (set aside, not dead-lettered: they name no queue)."""
    valid = {"n": re.compile(r"[1-9][0-9]{0,8}"), "k": re.compile(r"0|[1-9][0-9]{0,8}")}
    wrong = [(name, value) for name, value in fields if value and not valid[name].fullmatch(value)]

    async def corrupt(url: str, queue: str) -> int:
        client = aioredis.Redis.from_url(url)
        try:
            for name, value in wrong:
                await client.xadd(keys.stream(queue, 0), {"b": good_call(), name: value})
            garbage = [b"x" + m for m in members]  # never a "<length>:" prefix
            if garbage:
                await client.zadd(keys.delayed(), dict.fromkeys(garbage, 0))
        finally:
            await client.aclose()
        return len(wrong)

    return corrupt


@pytest.mark.timeout(300)
@settings(SETTINGS, max_examples=4)
@given(
    mix=message_mix(),
    headers=st.lists(
        st.tuples(st.sampled_from(["aqueue-deliveries", "aqueue-eta"]), NOT_NUMBER | TEXT),
        max_size=2,
    ),
)
def test_amqp_worker_never_stalls(
    rabbitmq_server: Any,
    redis_server: str,
    mix: list[tuple[str, Any]],
    headers: list[tuple[str, Any]],
) -> None:
    asyncio.run(feed(rabbitmq_server.url, f"{redis_server}/0", mix, _amqp_headers(headers)))


def _amqp_headers(headers: list[tuple[str, Any]]) -> Corrupt:
    """Good envelopes published with a count or eta header that is not a whole number."""
    wrong = [(n, v) for n, v in headers if v is not None and not isinstance(v, dict | list)]

    async def corrupt(url: str, queue: str) -> int:
        connection = await aiormq.connect(url)
        try:
            channel = await connection.channel()
            for name, value in wrong:
                properties = spec.Basic.Properties(delivery_mode=2, headers={name: value})
                await channel.basic_publish(good_call(), routing_key=queue, properties=properties)
        finally:
            await connection.close()
        return len(wrong)

    return corrupt
