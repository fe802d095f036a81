"""Delayed delivery on RabbitMQ with no plugin: a chain of TTL queues, one per bit of the delay.

RabbitMQ has no "deliver at" without the delayed-message plugin, but a queue with a fixed
``x-message-ttl`` expires its messages in order and can dead-letter them elsewhere. Level ``L``
(0..31) is a topic exchange ``aqueue.delay.L`` and a queue of the same name whose messages live
exactly ``2**L`` ms, then are dead-lettered to exchange ``aqueue.delay.L-1``. A delay of ``d`` ms
is written in binary as the routing key, 32 words from bit 31 down to bit 0
(``"0.0. … .1.1.0.0.1.0"``), and each level routes on its own word:

- bit ``L`` is 1: into queue ``L`` (wait ``2**L`` ms, then on to exchange ``L-1``);
- bit ``L`` is 0: straight on to exchange ``L-1`` (an exchange-to-exchange binding, no wait).

Dead-lettering keeps the routing key, so the message walks down the levels and waits exactly the
sum of its set bits: ``d`` ms. Below level 0 is ``aqueue.delay.deliver``, a headers exchange that
hands the message to its target queue, named in header ``aqueue-target`` (each target queue is
bound there with that header). A publish enters at the level of the delay's highest set bit.

Every queue of one level holds messages of one TTL, so none waits behind a longer one (the
problem of per-message TTLs, which RabbitMQ only expires at the head of a queue). Precision:
at least ``d`` ms after the publish, plus roughly a millisecond of dead-lettering per set bit.
The longest delay is ``2**32 - 1`` ms (about 49.7 days); a longer eta goes round again (the
consumer re-delays a message that arrives with its ``aqueue-eta`` header, epoch milliseconds,
still in the future).

The levels are shared by every queue and declared once per connection, on the first delayed
publish: 33 exchanges, 32 queues and 64 bindings, all durable, so a delayed message survives a
broker restart (its TTL clock keeps running while the node is down; a message whose time passed
meanwhile moves on when the node is back).

There are two chains, one per queue type, so that delayed messages are kept as the queues they
are for: the classic one above, and with ``queue_type="quorum"`` a chain of quorum queues
(``aqueue.delay.quorum.L``, its own exchanges, the same deliver exchange; RabbitMQ 3.10+, whose
quorum queues have ``x-message-ttl``): replicated like the work queues, so a delayed message
survives the loss of a cluster node, and dead-lettered from level to level at least once
(``x-dead-letter-strategy``), where a classic queue's hop is at most once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import aiormq.abc

__all__ = [
    "CHAIN",
    "DELIVER_EXCHANGE",
    "ETA_HEADER",
    "LEVELS",
    "MAX_DELAY_MS",
    "TARGET_HEADER",
    "declare_levels",
    "delay_ms",
    "entry_exchange",
    "level_arguments",
    "level_queues",
    "routing_key",
]

LEVELS = 32
MAX_DELAY_MS = 2**LEVELS - 1
DELIVER_EXCHANGE = "aqueue.delay.deliver"
TARGET_HEADER = "aqueue-target"  # no "x-" prefix: a headers exchange ignores x- headers
#: How queue administration names the whole chain (not a queue: its 32 level queues together).
#: The chain is shared by every queue, so its messages are counted and purged only as a whole.
CHAIN = "aqueue.delay.*"
# The eta in epoch milliseconds (an int: AMQP tables carry floats in single precision), set when
# the consumer must check the eta itself: routed through an exchange, or longer than the chain.
ETA_HEADER = "aqueue-eta"


def _exchange(level: int, quorum: bool = False) -> str:
    if level < 0:
        return DELIVER_EXCHANGE
    return f"aqueue.delay.quorum.{level}" if quorum else f"aqueue.delay.{level}"


def level_queues(quorum: bool = False) -> list[str]:
    """The names of the (quorum) chain's 32 queues, level 0 first."""
    return [_exchange(level, quorum) for level in range(LEVELS)]


def _pattern(level: int, bit: str) -> str:
    """The topic binding key matching routing keys whose word for ``level`` is ``bit``."""
    return ".".join(["*"] * (LEVELS - 1 - level) + [bit, "#"])


def delay_ms(seconds: float) -> int:
    """A delay in whole milliseconds, rounded up so that a message is never early.

    Capped at :data:`MAX_DELAY_MS`; 0 or less means "no delay".
    """
    return int(min(max(math.ceil(seconds * 1000), 0), MAX_DELAY_MS))


def routing_key(delay: int) -> str:
    """The routing key spelling ``delay`` (ms, 1..MAX_DELAY_MS) in binary, bit 31 first."""
    return ".".join(format(delay, f"0{LEVELS}b"))


def entry_exchange(delay: int, quorum: bool = False) -> str:
    """The exchange to publish a ``delay`` ms message to: its highest set bit's level, in the
    (quorum) chain."""
    return _exchange(delay.bit_length() - 1, quorum)


def level_arguments(level: int, quorum: bool = False) -> dict[str, Any]:
    """The arguments of the (quorum) chain's queue of ``level``: its TTL, and where its
    messages go when it runs out."""
    arguments: dict[str, Any] = {
        "x-message-ttl": 2**level,
        "x-dead-letter-exchange": _exchange(level - 1, quorum),
    }
    if quorum:
        arguments.update(
            {
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",  # required by at-least-once; nothing is limited
            }
        )
    return arguments


async def declare_levels(
    channels: Sequence[aiormq.abc.AbstractChannel], quorum: bool = False
) -> None:
    """Declare the whole (quorum) chain (idempotent: redeclaring with the same arguments is a
    no-op).

    Exchanges first, on ``channels[0]``; then the queues, spread over all ``channels``: RabbitMQ
    handles one channel's methods in order, and creating a durable queue takes milliseconds, so
    a fresh broker's first delayed message waits less. Declarations are sent without waiting
    for each reply (``nowait``); one last declaration with a reply per channel confirms them,
    since any refusal would have closed the channel.

    Raises:
        aiormq.exceptions.AMQPError: a declaration was refused or a channel closed.
    """
    first = channels[0]
    await first.exchange_declare(
        DELIVER_EXCHANGE, exchange_type="headers", durable=True, nowait=True
    )
    for level in range(LEVELS):
        name = _exchange(level, quorum)
        await first.exchange_declare(name, exchange_type="topic", durable=True, nowait=True)
        await first.exchange_bind(
            destination=_exchange(level - 1, quorum),
            source=name,
            routing_key=_pattern(level, "0"),
            nowait=True,
        )
    await first.exchange_declare(DELIVER_EXCHANGE, exchange_type="headers", durable=True)

    async def queues(channel: aiormq.abc.AbstractChannel, levels: range) -> None:
        for level in levels:
            name = _exchange(level, quorum)
            arguments = level_arguments(level, quorum)
            await channel.queue_declare(name, durable=True, arguments=arguments, nowait=True)
            await channel.queue_bind(name, name, routing_key=_pattern(level, "1"), nowait=True)
        await channel.exchange_declare(DELIVER_EXCHANGE, exchange_type="headers", durable=True)

    n = len(channels)
    await asyncio.gather(*(queues(c, range(i, LEVELS, n)) for i, c in enumerate(channels)))


async def bind_target(channel: aiormq.abc.AbstractChannel, queue: str) -> None:
    """Bind ``queue`` to the deliver exchange, so delayed messages for it reach it.

    Raises:
        aiormq.exceptions.AMQPError: the binding was refused or the channel closed.
    """
    await channel.queue_bind(
        queue,
        DELIVER_EXCHANGE,
        routing_key="",
        arguments={"x-match": "all", TARGET_HEADER: queue},
    )
