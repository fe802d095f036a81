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
import logging
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

log = logging.getLogger(__name__)

QUEUE_TYPES = ("classic", "quorum")
MAX_PRIORITY = 9
# A quorum queue's poison-cap arguments besides x-delivery-limit: at-least-once dead-lettering
# (RabbitMQ 3.10+), which requires the reject-publish overflow.
_POISON_CAP = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
_CAP_NAMES = ("x-delivery-limit", *_POISON_CAP)
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
        max_deliveries: quorum queues' ``x-delivery-limit`` (``task_max_deliveries``).
        priorities: classic queues are declared with ``x-max-priority: 9``; ``False``: without.
    """

    def __init__(
        self,
        url: str,
        queue_type: str,
        declarer: Callable[[], Awaitable[aiormq.Channel]],
        scratch: Callable[[], Awaitable[aiormq.abc.AbstractChannel]],
        timeout: float,
        max_deliveries: int = 5,
        priorities: bool = True,
    ) -> None:
        self._url = url
        self._queue_type = queue_type
        self._priorities = priorities
        self._max_deliveries = max_deliveries
        # Quorum queues found declared without aqueue's poison cap (an older aqueue, another
        # tool, another task_max_deliveries): used as they are, warned about once each.
        self._as_found: set[str] = set()
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

    @property
    def queues(self) -> frozenset[str]:
        """The work queues declared on this connection so far."""
        return frozenset(self._queues)

    def queue_arguments(self, queue: str) -> dict[str, Any] | None:
        """The arguments of work queue ``queue``; ``None`` for a quorum queue found declared
        with other poison-cap arguments, which is used as it is (declared passively).

        Both types dead-letter to ``<queue>.dlq``. Classic: ``x-max-priority: 9`` (none with
        ``priorities`` off). Quorum:
        ``x-delivery-limit`` (``task_max_deliveries``: RabbitMQ dead-letters a message
        returned more often than that, so a message that kills every consumer before it can
        be counted still ends up there), and at-least-once dead-lettering
        (``x-dead-letter-strategy``, which needs ``x-overflow: reject-publish``; no length
        limit is set, so nothing is rejected for it).
        """
        if queue in self._as_found:
            return None
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue(queue),
        }
        if self._queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            arguments.update(_POISON_CAP, **{"x-delivery-limit": self._max_deliveries})
        elif self._priorities:
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
            await self._bounded(
                channel.queue_declare(
                    queue, durable=True, arguments=arguments, passive=arguments is None
                )
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            if arguments is not None and await self._quorum_as_found(queue, str(exc)):
                self._queues.add(queue)
                return
            raise BrokerError(
                f"RabbitMQ at {redacted_url(self._url)} refused to declare queue {queue!r}: {exc}."
                f" It exists with other arguments; aqueue declares it durable with {arguments} "
                f"(queue_type={self._queue_type!r}): delete it, or use another queue name"
            ) from exc
        self._queues.add(queue)

    async def _quorum_as_found(self, queue: str, refusal: str) -> bool:
        """True when quorum queue ``queue`` was refused for its poison-cap arguments
        (``refusal``, RabbitMQ's reply, names one: it was declared by an older aqueue, another
        tool or with another ``task_max_deliveries``): it is then used as it is, with a
        warning, since the worker's own count still caps poison messages."""
        if self._queue_type != "quorum" or "x-queue-type" in refusal:
            return False  # a classic queue is never used as a quorum one
        if not any(name in refusal for name in _CAP_NAMES):
            return False
        self._as_found.add(queue)
        log.warning(
            "RabbitMQ at %s: quorum queue %r exists with other poison-cap arguments (%s); "
            "using it as it is: the worker's count (task_max_deliveries=%d) still dead-letters "
            "poison messages, but RabbitMQ's own x-delivery-limit is not that. To have it, "
            "drain and delete the queue (aqueue declares it again)",
            redacted_url(self._url),
            queue,
            refusal,
            self._max_deliveries,
        )
        return True

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
                quorum = self._queue_type == "quorum"
                await self._bounded(delay.declare_levels(scratch, quorum))
            finally:
                for channel in scratch:
                    with contextlib.suppress(Exception):
                        await channel.close()
            self._levels = True
        channel = await self._declarer()
        await self._bounded(delay.bind_target(channel, target))
        self._delay_targets.add(target)

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, within the timeout (seconds).

        Raises:
            TimeoutError: it took longer (it is cancelled).
        """
        # Not wait_for: on 3.11 it loses a cancellation that comes as the wait ends.
        async with asyncio.timeout(self._timeout):
            return await awaitable
