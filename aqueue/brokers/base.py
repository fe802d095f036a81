"""The Broker Protocol: the whole contract between aqueue's core and a message transport.

A broker moves opaque message bodies (bytes) between named queues. It knows nothing of tasks,
results or retries; the core decides those and calls these methods. The semantics follow the
at-least-once model of Redis Streams consumer groups and AMQP late acknowledgement:

- ``publish`` stores messages durably before it returns. A message with ``eta`` in the future is
  held back until then (a delayed message); among ready messages, priority 9 is delivered first.
- ``fetch`` hands out up to ``limit`` messages and *leases* them to this consumer. A leased
  message is invisible to other consumers until it is acked, released, dead-lettered, or its
  lease runs out (the visibility timeout, seconds) - then it is delivered again, with
  ``Delivery.delivery_count`` one higher. ``renew`` extends leases for long tasks.
- ``ack`` removes a message for good; ``release`` hands it back at once (graceful shutdown);
  ``dead_letter`` moves it to the queue's dead-letter queue with a reason.

A backend implements this Protocol in one module; the contract suite in
``tests/test_broker_contract.py`` checks every one the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


def dead_letter_queue(queue: str) -> str:
    """The name of ``queue``'s dead-letter queue: ``"<queue>.dlq"``."""
    return f"{queue}.dlq"


@dataclass(frozen=True, slots=True)
class Binding:
    """A queue bound to an AMQP exchange, declared before a message is published through it.

    Attributes:
        queue: the bound queue.
        exchange: the exchange's name.
        exchange_type: ``"direct"``, ``"topic"`` or ``"fanout"``; ``None`` to use the exchange
            as it exists (declaring a direct one if it does not).
        routing_key: the binding key (a pattern for a topic exchange, unused by fanout).
    """

    queue: str
    exchange: str
    exchange_type: str | None
    routing_key: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish.

    Attributes:
        queue: the target queue name.
        body: the encoded message (see :mod:`aqueue.message`).
        message_id: the task id; brokers may use it to name the stored message.
        priority: 0..9, 9 delivered first.
        eta: earliest delivery time in epoch seconds, or ``None`` for now.
        exchange: AMQP only: publish through this exchange with ``routing_key`` instead of
            straight to ``queue`` (other brokers deliver to ``queue`` and ignore the routing).
        routing_key: AMQP only: the routing key used with ``exchange``.
        bindings: AMQP only: queue bindings to ``exchange`` to declare before publishing.
    """

    queue: str
    body: bytes
    message_id: str
    priority: int = 0
    eta: float | None = None
    exchange: str | None = None
    routing_key: str | None = None
    bindings: tuple[Binding, ...] = ()


@dataclass(slots=True)
class Delivery:
    """A message leased to this consumer by :meth:`Broker.fetch`.

    Attributes:
        queue: the queue it came from.
        body: the message bytes exactly as published.
        delivery_count: 1 on the first delivery, +1 on each redelivery.
        token: the broker's own handle for ack/release (stream entry id, row id, AMQP message...).
    """

    queue: str
    body: bytes
    delivery_count: int
    token: Any


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter queue, as :meth:`Broker.dead_letters` returns it."""

    queue: str
    body: bytes
    reason: str
    time: float


@runtime_checkable
class Broker(Protocol):
    """What the core needs from a message transport. All times are seconds (float)."""

    async def connect(self) -> None:
        """Open connections and declare what is needed. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached; the message says which and why.
        """

    async def close(self) -> None:
        """Release connections. Leased messages not acked are delivered again later. Idempotent."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store ``messages`` durably (in one round trip where the transport allows).

        Raises:
            BrokerConnectionError: the broker cannot be reached; nothing may be assumed stored.
        """

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages from ``queues``, waiting up to ``timeout`` seconds.

        Returns as soon as at least one message is ready (an empty list after ``timeout``).
        The worker cancels a waiting fetch when it stops: a message leased by a cancelled fetch
        must not be lost (at worst it is delivered again after the visibility timeout).
        Higher priority first; among equal priorities, oldest first; earlier queues in
        ``queues`` win ties between queues. Messages whose lease ran out are delivered again
        here with a higher ``delivery_count``.
        """

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove delivered messages for good. Acking twice is harmless."""

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give leased messages back for immediate redelivery (delivery_count is kept)."""

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Extend the lease (visibility timeout) of messages still being worked on."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a leased message to its queue's dead-letter queue with ``reason``; acks it."""

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to ``limit`` dead-lettered messages of ``queue``."""
