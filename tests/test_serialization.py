"""Faithful arguments and results: every listed type through a real worker, on json and msgpack.

The worker runs in the test's loop (memory, SQLite, Redis, AMQP via ``transport_url``), or as a
separate process for the types registered at import (``tests.apps.typed_tasks``).
"""

from __future__ import annotations

import ast
import enum
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import orjson
import pydantic
import pytest

from aqueue import Aqueue, Worker, register_serializer, register_type
from aqueue import serialization as ser
from aqueue.exceptions import ConfigurationError, ContentDisallowed, DecodeError, EncodeError
from aqueue.message import Message, decode
from aqueue.results.record import ResultRecord
from aqueue.transports import QueueAdmin
from tests.apps import typed_tasks
from tests.apps.tasks import backend_for
from tests.apps.typed_tasks import Money, Point
from tests.workerproc import WorkerProcess

SERIALIZERS = ["json", "msgpack"]

# Every type the serializers keep, with a value of it (names are the test ids).
VALUES: dict[str, Any] = {
    "datetime-aware": datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=ZoneInfo("Asia/Shanghai")),
    "datetime-utc": datetime(2024, 5, 1, 4, 30, tzinfo=UTC),
    "datetime-offset": datetime(2024, 5, 1, 4, 30, tzinfo=timezone(timedelta(hours=-3))),
    "datetime-naive": datetime(2024, 5, 1, 4, 30),
    "date": date(2024, 2, 29),
    "time": time(23, 59, 58, 999),
    "time-aware": time(8, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    "timedelta": timedelta(days=-2, seconds=3, microseconds=4),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": Decimal("12.3400"),
    "bytes": b"\x00\xffbinary",
    "set": {1, "two", (3, 4)},
    "frozenset": frozenset({"a", "b"}),
    "int-keys": {1: "a", 2: "b"},
    "tuple-keys": {(1, 2): "pair", None: "none"},
    "big-int": 2**80,
    "type-key-dict": {"__type__": "uuid", "__value__": "not a uuid: a user's own dict"},
    "nested": {"when": [datetime(2020, 1, 1, tzinfo=UTC)], "ids": {"a": uuid.UUID(int=1)}},
    "dataclass": Point(1, 2, datetime(2021, 6, 1, tzinfo=UTC)),
    "custom": Money(Decimal("9.99"), "EUR"),
    "uuid-shaped-str": "12345678-1234-5678-1234-567812345678",
}


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``1 == 1.0 == True`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime | time):
        return a == b and a.utcoffset() == b.utcoffset() and str(a.tzinfo) == str(b.tzinfo)
    return bool(a == b)


@pytest.fixture(params=SERIALIZERS)
def serializer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def typed(transport_url: str, serializer: str) -> AsyncIterator[Aqueue]:
    """The echo task on the transport under test, sending and storing with ``serializer``, and
    a worker running it."""
    app = typed_tasks.build(
        transport_url,
        queue=f"q-{uuid.uuid4().hex[:12]}",
        task_serializer=serializer,
        result_serializer=serializer,
        accept_content=[serializer],
    )
    async with Worker(app, concurrency=4, shutdown_timeout=5):
        yield app
    await app.close()


async def test_every_type_round_trips_through_a_worker(typed: Aqueue) -> None:
    names = list(VALUES)
    args = tuple(VALUES.values())
    kwargs = {"when": VALUES["datetime-aware"], "money": VALUES["custom"]}
    r = await typed.send_task("typed.echo", args, kwargs)
    got = await r.get(timeout=10)
    # Inside the worker, each argument had its own type ...
    expected_types = [type(v).__qualname__ for v in args]
    assert dict(zip(names, got["types"], strict=True)) == dict(
        zip(names, expected_types, strict=True)
    )
    assert got["kwarg_types"] == {"when": "datetime", "money": "Money"}
    # ... and the result came back with them too.
    for name, sent, back in zip(names, args, got["args"], strict=True):
        assert same(sent, back), (name, sent, back)
    assert same(kwargs, got["kwargs"])


async def test_a_result_of_a_typed_value_is_kept(typed: Aqueue) -> None:
    r = await typed.send_task("typed.echo", (VALUES["uuid"],))
    assert same((await r.get(timeout=10))["args"], [VALUES["uuid"]])
    assert r.result is not None and same(r.result["args"][0], VALUES["uuid"])


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_registered_types_cross_to_a_worker_process(shared_url: str, serializer: str) -> None:
    """A type registered at import of a module both sides import works across processes."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    env = {"AQUEUE_BROKER_URL": shared_url, "AQUEUE_E2E_QUEUE": queue}
    app = typed_tasks.build(
        shared_url, queue=queue, task_serializer=serializer, result_serializer=serializer
    )
    async with WorkerProcess("tests.apps.typed_tasks", ["-c", "4"], env):
        point, money = VALUES["dataclass"], VALUES["custom"]
        got = await (await app.send_task("typed.echo", (point, money, VALUES["set"]))).get(
            timeout=20
        )
    await app.close()
    assert got["types"] == ["Point", "Money", "set"]
    assert same(got["args"], [point, money, VALUES["set"]])


# -- tuples and Enum members come back by annotation ----------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    S = 1
    L = 3


class Pair(NamedTuple):
    left: int
    right: int


async def test_tuples_and_enums_by_annotation_through_a_worker(
    transport_url: str, serializer: str
) -> None:
    backend = backend_for(transport_url)
    app = Aqueue("ann", broker=transport_url, backend=backend, task_serializer=serializer)
    app.conf.task_default_queue = f"q-{uuid.uuid4().hex[:12]}"
    app.conf.accept_content = [serializer]

    @app.task(name="ann.shapes")
    async def shapes(
        point: tuple[int, int],
        pairs: list[tuple[str, int]],
        color: Color,
        size: Size | None,
        named: Pair,
        anything: Any,
        *,
        tags: frozenset[str],
        by_key: dict[str, tuple[int, ...]],
    ) -> list[str]:
        return [
            type(point).__name__,
            type(pairs[0]).__name__,
            repr(color),
            repr(size),
            repr(named),
            type(anything).__name__,
            type(tags).__name__,
            type(by_key["k"]).__name__,
        ]

    async with Worker(app, concurrency=2, shutdown_timeout=5):
        r = await shapes.delay(
            (1, 2), [("a", 1)], Color.BLUE, Size.L, Pair(3, 4), (5, 6), tags=frozenset({"x"}),
            by_key={"k": (1, 2, 3)},
        )  # fmt: skip
        got = await r.get(timeout=10)
    await app.close()
    # An unannotated tuple is a list on json (JSON has no tuple); msgpack keeps it.
    plain = "tuple" if serializer == "msgpack" else "list"
    assert got == [
        "tuple", "tuple", "<Color.BLUE: 'blue'>", "<Size.L: 3>", "Pair(left=3, right=4)",
        plain, "frozenset", "tuple",
    ]  # fmt: skip


def test_a_task_called_directly_keeps_its_arguments() -> None:
    app = Aqueue("direct", broker="memory://")

    @app.task
    def first(point: tuple[int, int], color: Color) -> tuple[Any, Any]:
        return point, color

    assert first([1, 2], "red") == ((1, 2), Color.RED)  # type: ignore[arg-type]
    assert first((1, 2), Color.BLUE) == ((1, 2), Color.BLUE)
    assert first([1, 2], "green") == ((1, 2), "green")  # type: ignore[arg-type]  # not a member


# -- what cannot travel is refused at the sender, named -------------------------------------------


class Opaque:
    """No codec: cannot travel."""


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_an_unserialisable_argument_is_named_by_position_and_type(serializer: str) -> None:
    msg = Message(id="m", task="proj.send", args=(1, {"a": [0, Opaque()]}), content_type=serializer)
    with pytest.raises(EncodeError) as info:
        msg.encode()
    text = str(info.value)
    assert "args[1]['a'][1] of proj.send" in text, text
    assert "test_serialization.Opaque)" in text and serializer in text, text
    assert "register_type(Opaque" in text, text


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_an_unserialisable_keyword_argument_is_named(serializer: str) -> None:
    msg = Message(id="m", task="proj.send", kwargs={"when": Opaque()}, content_type=serializer)
    with pytest.raises(EncodeError, match=r"kwargs\['when'\] of proj.send \(.*Opaque\)"):
        msg.encode()


def test_an_unregistered_dataclass_says_how_to_register_it() -> None:
    @dataclass
    class Loose:
        x: int

    with pytest.raises(EncodeError, match=r"args\[0\].*a dataclass.*register_type\(Loose\)"):
        Message(id="m", task="t", args=(Loose(1),)).encode()


async def test_nothing_is_sent_when_an_argument_cannot_travel() -> None:
    app = Aqueue("refuse", broker="memory://", backend="memory://")

    @app.task
    async def take(value: Any) -> None: ...

    with pytest.raises(EncodeError, match=r"args\[0\] of .*take \(.*Opaque\)"):
        await take.delay(Opaque())
    broker = await app.broker()
    assert isinstance(broker, QueueAdmin)
    assert sum(d.ready for d in await broker.queue_depths(["default"])) == 0
    await app.close()


def test_an_unserialisable_result_is_named() -> None:
    rec = ResultRecord("t", "SUCCESS", {"x": Opaque()}, None, 1.0, 0, "proj.make")
    with pytest.raises(EncodeError, match=r"the result\['x'\] of proj.make"):
        rec.encode()
    with pytest.raises(EncodeError, match=r"the result of proj.make\['x'\]"):
        rec.encode("msgpack")


# -- the wire -------------------------------------------------------------------------------------


def test_plain_arguments_are_inline_json_as_before() -> None:
    """The fast path writes the same envelope as orjson alone: nothing tagged, args inline."""
    msg = Message(id="m", task="t", args=(2, "x", None, [1.5, True]), kwargs={"k": {"a": 1}})
    raw = msg.encode()
    env = orjson.loads(raw)
    assert env["args"] == [2, "x", None, [1.5, True]] and env["kwargs"] == {"k": {"a": 1}}
    assert b"__type__" not in raw and "tx" not in env


def test_a_typed_value_is_tagged_as_kombu_tags_it() -> None:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    env = orjson.loads(Message(id="m", task="t", args=(when, uuid.UUID(int=1))).encode())
    assert env["args"] == [
        {"__type__": "datetime", "__value__": "2024-05-01T00:00:00+00:00"},
        {"__type__": "uuid", "__value__": "00000000-0000-0000-0000-000000000001"},
    ]
    assert env["tx"] == ["args"]  # the fields a reader walks for typed values


def test_a_dict_shaped_like_a_typed_value_stays_a_dict() -> None:
    """Only the fields listed under "tx" are read for typed values; those were escaped."""
    lookalike = {"__type__": "uuid", "__value__": "12345678-1234-5678-1234-567812345678"}
    plain = Message(id="m", task="t", args=(lookalike,), headers={"h": lookalike})
    assert decode(plain.encode()).args == (lookalike,)
    mixed = Message(id="m", task="t", args=(lookalike, uuid.UUID(int=3)), headers={"h": lookalike})
    got = decode(mixed.encode())
    assert got.args == (lookalike, uuid.UUID(int=3)) and got.headers == {"h": lookalike}


def test_a_type_unknown_to_the_reader_is_a_decode_error_naming_it() -> None:
    typed = {"__type__": "nowhere.Thing", "__value__": 1}
    raw = orjson.dumps({"v": 1, "id": "m", "task": "t", "args": [typed], "tx": ["args"]})
    with pytest.raises(DecodeError, match=r"'nowhere\.Thing' is not registered in this process"):
        decode(raw)


def test_pydantic_models_by_registration() -> None:
    class User(pydantic.BaseModel):
        name: str
        joined: datetime

    register_type(User, "tests.user")
    user = User(name="ann", joined=datetime(2020, 1, 1, tzinfo=UTC))
    for serializer in SERIALIZERS:
        data = ser.dumps({"u": user}, serializer)
        back = ser.loads(data, serializer)["u"]
        assert type(back) is User and back == user


def test_register_type_refuses_what_it_cannot_honour() -> None:
    with pytest.raises(ConfigurationError, match="Enum: its members travel as their value"):
        register_type(Color)
    with pytest.raises(ConfigurationError, match="JSON type already"):
        register_type(str)
    with pytest.raises(ConfigurationError, match="give encode= and decode="):
        register_type(Opaque)
    with pytest.raises(ConfigurationError, match="aqueue's own"):
        register_type(Opaque, "uuid", repr, str)


# -- eager mode goes through the serializer -------------------------------------------------------


async def test_eager_mode_fails_where_a_broker_would() -> None:
    app = Aqueue("eager", broker="memory://", task_always_eager=True)
    seen: list[Any] = []

    @app.task
    async def keep(value: Any, point: tuple[int, int]) -> Any:
        seen.append((value, point))
        return value

    with pytest.raises(EncodeError, match=r"args\[0\] of .*keep \(.*Opaque\)"):
        await keep.delay(Opaque(), (1, 2))
    assert seen == []
    when = datetime(2024, 1, 1, tzinfo=UTC)
    assert await (await keep.delay((when, 1), (1, 2))) == [when, 1]  # JSON: a list
    assert seen[-1] == ([when, 1], (1, 2))  # the annotated tuple is a tuple again

    app.conf.task_eager_serializes = False  # opt out: objects pass untouched
    opaque = Opaque()
    assert await (await keep.delay(opaque, (1, 2))) is opaque


async def test_eager_mode_checks_accept_content() -> None:
    app = Aqueue("eager", broker="memory://", task_always_eager=True)

    @app.task(serializer="pickle")
    async def pickled(x: int) -> int:
        return x

    with pytest.raises(ContentDisallowed, match="pickle"):
        await pickled.delay(1)
    app.conf.accept_content = ["json", "pickle"]
    assert await (await pickled.delay(1)) == 1


async def test_eager_mode_stores_an_unserialisable_result_as_a_failure() -> None:
    app = Aqueue("eager", broker="memory://", task_always_eager=True)

    @app.task
    async def make() -> Any:
        return Opaque()

    with pytest.raises(EncodeError, match="the result of"):
        await make.delay()
    app.conf.task_eager_propagates = False
    r = await make.delay()
    assert await r.failed()


# -- custom serializers ---------------------------------------------------------------------------


def _literal_dumps(value: Any) -> bytes:
    return repr(value).encode()


def _literal_loads(data: bytes) -> Any:
    return ast.literal_eval(data.decode())


register_serializer("pyliteral", _literal_dumps, _literal_loads, "application/x-python-literal")


async def test_a_registered_serializer_by_name_and_in_accept_content() -> None:
    # accept_content may name it by MIME type, as in Celery.
    app = Aqueue(
        "custom", broker="memory://", backend="memory://",
        task_serializer="pyliteral", result_serializer="pyliteral",
        accept_content=["application/x-python-literal"],
    )  # fmt: skip
    app.conf.task_default_queue = f"q-{uuid.uuid4().hex[:12]}"

    @app.task
    async def echo(value: Any) -> Any:
        return value

    async with Worker(app, concurrency=2, shutdown_timeout=5):
        value = {(1, 2): {3, 4}, "b": b"x"}  # a Python literal keeps tuples, sets and bytes
        assert await (await echo.delay(value)).get(timeout=10) == value
        r = await echo.apply_async(({1: 2},), serializer="json")  # not accepted by the worker
        with pytest.raises(ContentDisallowed):
            await r.get(timeout=10)
    await app.close()


def test_register_serializer_refuses_built_in_names_and_settings_check_names() -> None:
    with pytest.raises(ConfigurationError, match="must be a new"):
        register_serializer("json", _literal_dumps, _literal_loads, "application/json")
    with pytest.raises(ConfigurationError, match="register_serializer first"):
        Aqueue("x", task_serializer="nonesuch")
    with pytest.raises(ConfigurationError, match="names or MIME types"):
        Aqueue("x", accept_content=["application/x-nonesuch"])


def test_make_message_is_the_dataclass_with_every_field_given() -> None:
    import dataclasses

    from aqueue.message import Message, make_message

    message = Message("id-1", "proj.add", (2, 2), {"z": 1}, "q", 5, 1.0, 2.0, 1, {"h": 1},
                      [{"task": "t"}], [], 3.0, True, "p", "r", "g", {"o": 1}, "reply", "json",
                      "zlib", 4.0)  # fmt: skip
    values = [getattr(message, f.name) for f in dataclasses.fields(Message)]
    made = make_message(*values)
    assert made == message and made.encode() == message.encode()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.id = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        make_message(*values[:-1])  # a field missing is an error, not a default
