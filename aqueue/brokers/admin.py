"""Queue administration for ``aqueue status``, ``purge`` and ``dlq``: depths, purge, dead letters.

A separate, optional Protocol next to :class:`~aqueue.brokers.base.Broker`: the worker never
needs it, and a broker that lacks it still runs tasks - the operations commands then say so
(:func:`queue_admin`). ``memory``, ``sqlite`` and ``redis`` brokers implement it; the contract is
checked by ``tests/test_queue_admin.py``. Message counts may be a moment old on a busy broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aqueue.brokers.base import Broker
from aqueue.exceptions import ConfigurationError

__all__ = ["QueueAdmin", "QueueDepth", "queue_admin"]


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many messages a queue holds, by condition.

    Attributes:
        queue: the queue's name.
        ready: deliverable now (including those whose lease ran out).
        delayed: waiting for their eta (``countdown``, ``eta``, retries, rate-limit deferrals).
        unacked: leased to a worker that has not acked them yet (running or prefetched).
        dead: in the queue's dead-letter queue.
    """

    queue: str
    ready: int = 0
    delayed: int = 0
    unacked: int = 0
    dead: int = 0

    @property
    def waiting(self) -> int:
        """Messages a purge would remove: ready and delayed."""
        return self.ready + self.delayed


@runtime_checkable
class QueueAdmin(Protocol):
    """Administrative operations on a broker's queues."""

    async def queue_depths(self, queues: Sequence[str] | None = None) -> list[QueueDepth]:
        """The depth of each of ``queues``, or of every queue the broker holds anything for
        (``None``), in that order (then sorted by name).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        ...

    async def purge(self, queues: Sequence[str]) -> int:
        """Delete the ready and delayed messages of ``queues``; return how many.

        Messages leased to a worker (running or prefetched) are left alone, as Celery's purge
        does: their worker acks or releases them. Dead letters are kept (see
        :meth:`purge_dead_letters`).

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        ...

    async def purge_dead_letters(self, queue: str, limit: int | None = None) -> int:
        """Delete the oldest ``limit`` dead letters of ``queue`` (all if ``None``); return how
        many. :meth:`Broker.dead_letters` lists them in the same order.

        Raises:
            BrokerConnectionError: the broker cannot be reached.
        """
        ...


def queue_admin(broker: Broker) -> QueueAdmin:
    """``broker`` as a :class:`QueueAdmin`.

    Raises:
        ConfigurationError: the broker does not support queue administration.
    """
    if isinstance(broker, QueueAdmin):
        return broker
    raise ConfigurationError(
        f"the {type(broker).__name__} does not support queue administration yet (queue depths, "
        f"purge, dead-letter clean-up): it needs queue_depths, purge and purge_dead_letters "
        f"(see aqueue.brokers.admin)"
    )
