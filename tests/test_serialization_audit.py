"""Serialization edge cases: integers beyond 64 bits on their own, values that nest too deep."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from aqueue import Aqueue, Worker
from aqueue import serialization as ser
from aqueue.exceptions import EncodeError
from aqueue.message import Message, decode
from aqueue.results.record import ResultRecord

pytestmark = pytest.mark.timeout(60)

BIG = 2**64  # one past what orjson writes as a JSON integer
SMALL = -(2**63) - 1


def _deep(levels: int) -> list[Any]:
    """A list nested ``levels`` deep: ``[[[...]]]``."""
    top: list[Any] = []
    inner = top
    for _ in range(levels):
        nested: list[Any] = []
        inner.append(nested)
        inner = nested
    return top


@pytest.fixture
async def echo_app() -> AsyncIterator[tuple[Aqueue, Any, Any]]:
    """An app on its own memory broker with an echo task and a task returning a big integer,
    and a worker running them."""
    app = Aqueue("audit", broker=f"memory://audit-{uuid.uuid4().hex[:8]}")

    @app.task(name="audit.echo")
    async def echo(*args: Any, **kwargs: Any) -> Any:
        return [list(args), kwargs]

    @app.task(name="audit.big")
    async def big() -> int:
        return BIG

    async with Worker(app, concurrency=2, shutdown_timeout=5):
        yield app, echo, big
    await app.close()


@pytest.mark.parametrize("value", [BIG, SMALL, 2**200])
def test_a_big_integer_alone_in_args_kwargs_or_result_is_encoded(value: int) -> None:
    msg = Message(id="m1", task="audit.echo", args=(value,), kwargs={"n": value})
    got = decode(msg.encode())
    assert got.args == (value,) or list(got.args) == [value]
    assert got.kwargs == {"n": value}
    record = ResultRecord("t1", "SUCCESS", value, None, 1.0, 0, "audit.big")
    assert ResultRecord.decode(record.encode()).result == value


def test_a_big_integer_in_a_message_with_headers_is_encoded() -> None:
    # Headers (or links, or canvas options) take the careful path from the start.
    msg = Message(id="m3", task="audit.echo", args=(BIG,), headers={"n": SMALL, "tag": "x"})
    got = decode(msg.encode())
    assert list(got.args) == [BIG]
    assert got.headers == {"n": SMALL, "tag": "x"}


async def test_a_big_integer_travels_through_a_worker_as_argument_and_result(
    echo_app: tuple[Aqueue, Any, Any],
) -> None:
    _, echo, big = echo_app
    result = await echo.delay(BIG, n=SMALL)
    assert await result.get(timeout=10) == [[BIG], {"n": SMALL}]
    # A result that is a big integer alone: stored, not lost (the caller used to wait forever).
    assert await (await big.delay()).get(timeout=10) == BIG


def _refusal(encode: Callable[[], object]) -> BaseException | None:
    """What ``encode()`` raised (a ``RecursionError`` is returned, not raised on: its traceback
    is too deep for the test report), or ``None``."""
    try:
        encode()
    except (EncodeError, RecursionError) as exc:
        return exc
    return None


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_a_value_that_nests_too_deep_is_an_encode_error(serializer: str) -> None:
    deep = _deep(5000)
    error = _refusal(lambda: ser.dumps(deep, serializer))
    assert isinstance(error, EncodeError), repr(error)[:200]
    assert "nests too deep" in str(error)


def test_a_deep_argument_with_compression_is_an_encode_error() -> None:
    msg = Message(id="m2", task="audit.echo", args=(_deep(5000),), compression="zlib")
    error = _refusal(msg.encode)
    assert isinstance(error, EncodeError), repr(error)[:200]
    assert "args of audit.echo" in str(error)
