"""The completer batches result stores and acks across runners, store before ack."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from aqueue.exceptions import BrokerConnectionError
from aqueue.transports import Delivery, Outgoing
from aqueue.transports.memory.broker import MemoryBroker
from aqueue.transports.memory.results import MemoryBackend
from aqueue.worker.completer import Completer


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.fail = False

    async def store(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        self.calls.append(len(items))
        if self.fail:
            raise BrokerConnectionError("backend down")
        await super().store(items, expires)


class CountingBroker(MemoryBroker):
    def __init__(self, backend: CountingBackend) -> None:
        super().__init__()
        self.backend = backend
        self.calls: list[int] = []
        self.stored_before_ack: list[bool] = []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.calls.append(len(deliveries))
        self.stored_before_ack.append(sum(self.backend.calls) >= sum(self.calls))
        await super().ack(deliveries)


async def leased(broker: MemoryBroker, n: int) -> list[Delivery]:
    await broker.publish([Outgoing("q", b"x%d" % i, str(i)) for i in range(n)])
    return await broker.fetch(["q"], n, 1)


async def test_concurrent_finishes_share_one_store_and_one_ack() -> None:
    backend = CountingBackend()
    broker = CountingBroker(backend)
    deliveries = await leased(broker, 100)
    completer = Completer(broker, backend, 60)
    await asyncio.gather(
        *(completer.finish([(str(i), b"r")], [d]) for i, d in enumerate(deliveries))
    )
    assert backend.calls == [100]
    assert broker.calls == [100]
    assert all(broker.stored_before_ack)
    assert await backend.get_many(["0", "99"]) == [b"r", b"r"]
    assert await broker.fetch(["q"], 10, 0.05) == []  # all acked


async def test_a_full_batch_flushes_at_once() -> None:
    backend = CountingBackend()
    broker = CountingBroker(backend)
    deliveries = await leased(broker, 25)
    completer = Completer(broker, backend, 60, max_batch=20)  # calls of one item each
    await asyncio.gather(
        *(completer.finish([(str(i), b"r")], [d]) for i, d in enumerate(deliveries))
    )
    assert sum(backend.calls) == 25
    assert max(backend.calls) <= 20
    assert len(backend.calls) >= 2


async def test_a_failed_store_fails_every_caller_and_acks_nothing() -> None:
    backend = CountingBackend()
    backend.fail = True
    broker = CountingBroker(backend)
    deliveries = await leased(broker, 5)
    completer = Completer(broker, backend, 60)
    outcomes = await asyncio.gather(
        *(completer.finish([(str(i), b"r")], [d]) for i, d in enumerate(deliveries)),
        return_exceptions=True,
    )
    assert all(isinstance(o, BrokerConnectionError) for o in outcomes)
    assert broker.calls == []  # nothing acked: the messages will be delivered again


async def test_without_a_backend_only_acks() -> None:
    broker = MemoryBroker()
    deliveries = await leased(broker, 3)
    completer = Completer(broker, None, None)
    await asyncio.gather(*(completer.finish([("x", b"r")], [d]) for d in deliveries))
    assert await broker.fetch(["q"], 10, 0.05) == []


@pytest.mark.parametrize("n", [1, 2])
async def test_sequential_calls_each_complete(n: int) -> None:
    backend = CountingBackend()
    broker = CountingBroker(backend)
    deliveries = await leased(broker, n)
    completer = Completer(broker, backend, 60)
    for i, d in enumerate(deliveries):
        await completer.finish([(str(i), b"r")], [d])
    assert backend.calls == [1] * n
