"""What the AMQP broker declares on RabbitMQ, each thing once per connection.

Work queues (durable; classic with ``x-max-priority: 9``, or quorum) with their dead-letter
queues ``<queue>.dlq``, the exchanges and bindings that messages published through an exchange
name, and the delay chain of :mod:`aqueue.transports.amqp.delay`. What has been declared is
remembered until :meth:`Topology.forget` (after a reconnection, when the broker may have lost
it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiormq
import aiormq.abc
import aiormq.exceptions

from aqueue.exceptions import BrokerError
from aqueue.transports.amqp import delay
from aqueue.transports.amqp.connection import redacted_url
from aqueue.transports.base import Binding, Outgoing, dead_letter_queue

__all__ = ["MAX_PRIORITY", "QUEUE_TYPES", "Topology"]

T = TypeVar("T")

QUEUE_TYPES = ("classic", "quorum")
MAX_PRIORITY = 9
# Channels declaring the delay chain at once (see amqp_delay.declare_levels).
_DECLARE_CHANNELS = 8


class Topology:
    """Declares queues, exchanges, bindings and the delay chain, remembering what it did.

    Args:
        url: the broker's URL, for error messages.
        queue_type: ``"classic"`` or ``"quorum"``.
        declarer: returns the open channel to declare on (refusals close it; it reopens).
        scratch: opens a plain channel, for requests that may close it.
        timeout: seconds to wait for each reply.
    """

    def __init__(
        self,
        url: str,
        queue_type: str,
        declarer: Callable[[], Awaitable[aiormq.Channel]],
        scratch: Callable[[], Awaitable[aiormq.abc.AbstractChannel]],
        timeout: float,
    ) -> None:
        self._url = url
        self._queue_type = queue_type
        self._declarer = declarer
        self._scratch = scratch
        self._timeout = timeout
        # Held by whoever declares, so that concurrent publishes do not all declare the same.
        self.lock = asyncio.Lock()
        self.forget()

    def forget(self) -> None:
        """Forget what was declared: declare it again before the next use."""
        self._queues: set[str] = set()
        self._exchanges: set[str] = set()
        self._bindings: set[tuple[str, str, str]] = set()
        self._levels = False
        self._delay_targets: set[str] = set()

    def forget_queue(self, queue: str) -> None:
        self._queues.discard(queue)

    def queue_arguments(self, queue: str) -> dict[str, Any]:
        """The arguments of work queue ``queue``."""
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue(queue),
        }
        if self._queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        else:
            arguments["x-max-priority"] = MAX_PRIORITY
        return arguments

    async def prepare(self, messages: Sequence[Outgoing], now: float) -> None:
        """Declare what ``messages`` need before they are published at ``now`` (epoch seconds).

        Raises:
            BrokerError: a declaration was refused (see :meth:`ensure_queue`).
            aiormq.exceptions.AMQPError: the channel or connection failed.
        """
        async with self.lock:
            for m in messages:
                if m.exchange:
                    for binding in m.bindings:
                        await self.ensure_binding(binding)
                elif m.eta is not None and delay.delay_ms(m.eta - now) > 0:
                    await self.ensure_delay(m.queue)
                else:
                    await self.ensure_queue(m.queue)

    async def ensure_queue(self, queue: str) -> None:
        """Declare ``queue`` and its dead-letter queue.

        Raises:
            BrokerError: the queue exists with other arguments (declared by another tool, or
                with another ``queue_type``).
        """
        if queue in self._queues:
            return
        channel = await self._declarer()
        arguments = self.queue_arguments(queue)
        dlq_arguments: dict[str, Any] | None = (
            {"x-queue-type": "quorum"} if self._queue_type == "quorum" else None
        )
        try:
            await self._bounded(
                channel.queue_declare(
                    dead_letter_queue(queue), durable=True, arguments=dlq_arguments
                )
            )
            await self._bounded(channel.queue_declare(queue, durable=True, arguments=arguments))
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"RabbitMQ at {redacted_url(self._url)} refused to declare queue {queue!r}: {exc}."
                f" It exists with other arguments; aqueue declares it durable with {arguments} "
                f"(queue_type={self._queue_type!r}): delete it, or use another queue name"
            ) from exc
        self._queues.add(queue)

    async def ensure_exchange(self, name: str, kind: str | None) -> None:
        """Declare exchange ``name`` durable, of type ``kind``.

        With no ``kind`` (and for RabbitMQ's own ``amq.*`` exchanges, which may not be
        declared), an existing exchange is used as it is, and a missing one is declared direct.

        Raises:
            BrokerError: a missing ``amq.*`` exchange is named.
            aiormq.exceptions.ChannelPreconditionFailed: it exists with another type.
        """
        if name in self._exchanges:
            return
        if kind is None or name.startswith("amq."):
            # A passive declare of a missing exchange closes its channel: a scratch one.
            scratch = await self._scratch()
            try:
                await self._bounded(scratch.exchange_declare(name, passive=True))
                self._exchanges.add(name)
                return
            except aiormq.exceptions.ChannelNotFoundEntity:
                if name.startswith("amq."):
                    raise BrokerError(
                        f"RabbitMQ at {redacted_url(self._url)} has no exchange {name!r}, and "
                        f"amq.* names are reserved to RabbitMQ"
                    ) from None
            finally:
                with contextlib.suppress(Exception):
                    await scratch.close()
        channel = await self._declarer()
        await self._bounded(
            channel.exchange_declare(name, exchange_type=kind or "direct", durable=True)
        )
        self._exchanges.add(name)

    async def ensure_binding(self, binding: Binding) -> None:
        """Declare ``binding``'s queue and exchange, and bind them."""
        key = (binding.queue, binding.exchange, binding.routing_key)
        if key in self._bindings:
            return
        await self.ensure_queue(binding.queue)
        await self.ensure_exchange(binding.exchange, binding.exchange_type)
        channel = await self._declarer()
        await self._bounded(
            channel.queue_bind(binding.queue, binding.exchange, routing_key=binding.routing_key)
        )
        self._bindings.add(key)

    async def ensure_delay(self, target: str) -> None:
        """Declare the delay chain and bind ``target`` (declared too) to its end."""
        if self._levels and target in self._delay_targets:
            return
        await self.ensure_queue(target)
        if not self._levels:
            scratch = [await self._scratch() for _ in range(_DECLARE_CHANNELS)]
            try:
                await self._bounded(delay.declare_levels(scratch))
            finally:
                for channel in scratch:
                    with contextlib.suppress(Exception):
                        await channel.close()
            self._levels = True
        channel = await self._declarer()
        await self._bounded(delay.bind_target(channel, target))
        self._delay_targets.add(target)

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, self._timeout)
