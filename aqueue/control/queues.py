"""Cluster operations behind ``aqueue status``, ``aqueue purge`` and ``aqueue dlq``.

Library functions, so that a dashboard or a script can do what the commands do:
:func:`cluster_status` (queue depths and live workers), :func:`purge`,
:func:`replay_dead_letters`. Queue depths come from the broker
(:class:`~aqueue.transports.base.QueueAdmin`); live workers from their heartbeats in the control
transport's ``workers`` table, lost ones from the longer-kept ``seen`` table (see
:mod:`aqueue.worker.remote`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from aqueue.control.protocol import Table, heartbeats
from aqueue.exceptions import SerializationError
from aqueue.message import decode_envelope
from aqueue.perloop import PerLoop
from aqueue.transports import Outgoing
from aqueue.transports.base import Broker, DeadLetter, DeadLetterTakes, QueueDepth, queue_admin

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = [
    "ClusterStatus",
    "WorkerStatus",
    "app_queues",
    "cluster_status",
    "live_workers",
    "lost_workers",
    "purge",
    "queue_depths",
    "replay_dead_letters",
]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A live worker, from its last heartbeat.

    Attributes:
        hostname, pid, node: who it is (``node`` is unique per run).
        concurrency: its concurrency.
        active: tasks running at the last heartbeat.
        processed: messages handled since it started.
        uptime: seconds since it started (at the last heartbeat).
        queues: the queues it consumes.
        last_seen: seconds since its last heartbeat.
        held: messages fetched and not started (prefetched, or waiting for a rate-limit token).
        prefetch: how many messages it fetches ahead at most.
        events: whether it sends task events (``-E``).
    """

    hostname: str
    pid: int
    node: str
    concurrency: int
    active: int
    processed: int
    uptime: float
    queues: list[str] = field(default_factory=list)
    last_seen: float = 0.0
    held: int = 0
    prefetch: int = 0
    events: bool = False

    def as_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["uptime"] = round(self.uptime, 3)
        fields["last_seen"] = round(self.last_seen, 3)
        return fields


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What ``aqueue status`` shows: queue depths, live workers, and lost ones (stopped
    heartbeating without shutting down: :func:`lost_workers`).

    A count the broker cannot give is ``None`` (``null`` in :meth:`as_dict`): see
    :class:`~aqueue.transports.base.QueueDepth`.
    """

    queues: list[QueueDepth]
    workers: list[WorkerStatus]
    lost: list[WorkerStatus] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queues": [
                {
                    "queue": d.queue,
                    "ready": d.ready,
                    "delayed": d.delayed,
                    "unacked": d.unacked,
                    "dead": d.dead,
                    "consumers": d.consumers,
                }
                for d in self.queues
            ],
            "workers": [w.as_dict() for w in self.workers],
            "lost": [w.as_dict() for w in self.lost],
        }


def app_queues(app: Aqueue) -> list[str]:
    """The queues ``app`` names: the default queue, ``task_queues``, task ``queue`` options and
    queue names in ``task_routes`` dicts (a routing function cannot be read)."""
    named: list[str] = [app.conf.task_default_queue, *(app.conf.task_queues or {})]
    named += [t.queue for t in app.tasks.values() if t.queue]
    routes = app.conf.task_routes
    for table in routes if isinstance(routes, list | tuple) else [routes]:
        if isinstance(table, dict):
            for value in table.values():
                queue = value if isinstance(value, str) else dict(value).get("queue")
                if isinstance(queue, str):
                    named.append(queue)
    return list(dict.fromkeys(named))


async def live_workers(app: Aqueue) -> list[WorkerStatus]:
    """Workers whose heartbeat is current, sorted by hostname and pid.

    Raises:
        BrokerConnectionError: the control transport cannot be reached.
    """
    transport = await app.control_transport()
    _, entries = await transport.read(Table.WORKERS)
    return _workers(entries)


async def lost_workers(
    app: Aqueue, live: Sequence[WorkerStatus] | None = None
) -> list[WorkerStatus]:
    """Workers that stopped heartbeating without shutting down (killed, frozen, cut off) in
    the last ``WORKER_LOST_TTL`` seconds (an hour), sorted by hostname and pid; their
    ``last_seen`` says how long ago they last beat. ``live``: the live workers, if read
    already. The messages a lost worker held come back to the others after the visibility
    timeout (its leases are not renewed).

    Raises:
        BrokerConnectionError: the control transport cannot be reached.
    """
    transport = await app.control_transport()
    _, entries = await transport.read(Table.SEEN)
    alive = {w.node for w in (await live_workers(app) if live is None else live)}
    return [w for w in _workers(entries) if w.node not in alive]


def _workers(entries: dict[str, bytes]) -> list[WorkerStatus]:
    """The workers of heartbeat entries (node -> beat), sorted; malformed ones skipped."""
    now = time.time()
    workers = []
    for node, beat in heartbeats(entries).items():
        try:
            workers.append(
                WorkerStatus(
                    hostname=str(beat["hostname"]),
                    pid=int(beat["pid"]),
                    node=node,
                    concurrency=int(beat.get("concurrency", 0)),
                    active=int(beat.get("active", 0)),
                    processed=int(beat.get("processed", 0)),
                    uptime=float(beat.get("uptime", 0.0)),
                    queues=_queue_names(beat.get("queues", [])),
                    last_seen=max(0.0, now - float(beat.get("timestamp", now))),
                    held=int(beat.get("held", 0)),
                    prefetch=int(beat.get("prefetch", 0)),
                    events=bool(beat.get("events")),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(workers, key=lambda w: (w.hostname, w.pid))


def _queue_names(value: Any) -> list[str]:
    """A heartbeat's ``queues``: a list of names (one name alone, from another writer, is a
    list of one, not of its characters).

    Raises:
        TypeError: neither a list nor a string (the heartbeat is skipped).
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise TypeError(f"queues must be a list, not {type(value).__name__}")
    return [str(q) for q in value]


async def cluster_status(app: Aqueue, queues: Sequence[str] | None = None) -> ClusterStatus:
    """Queue depths and live workers.

    Args:
        queues: the queues to show; default every queue the broker holds messages for, the
            app's own queues and those its live workers consume.

    Raises:
        BrokerConnectionError: the broker or the control transport cannot be reached.
        ConfigurationError: the broker cannot report queue depths.
    """
    workers = await live_workers(app)
    lost = await lost_workers(app, workers)
    if queues is None:
        depths = await queue_depths(app, workers)
    else:
        depths = list(await queue_admin(await app.broker()).queue_depths(list(queues)))
    return ClusterStatus(depths, workers, lost)


async def queue_depths(app: Aqueue, workers: Sequence[WorkerStatus]) -> list[QueueDepth]:
    """The depths of every queue the broker holds messages for, the app's own queues and those
    ``workers`` consume (these even when empty), sorted by queue: one read when the broker
    reports them all, a second for the empty ones it does not.

    Raises:
        BrokerConnectionError: the broker cannot be reached.
        ConfigurationError: the broker cannot report queue depths.
    """
    admin = queue_admin(await app.broker())
    depths = list(await admin.queue_depths(None))
    missing = set(app_queues(app)).union(*(w.queues for w in workers))
    missing -= {d.queue for d in depths}
    if missing:
        depths += await admin.queue_depths(sorted(missing))
    return sorted(depths, key=lambda d: d.queue)


async def purge(app: Aqueue, queues: Sequence[str]) -> int:
    """Delete the waiting (ready and delayed) messages of ``queues``; return how many.

    Raises:
        BrokerConnectionError: the broker cannot be reached.
        ConfigurationError: the broker cannot purge.
    """
    return await queue_admin(await app.broker()).purge(queues)


#: One replay at a time per broker and queue in this process (and event loop): two at once
#: would read the same oldest letters and send them both (a broker without
#: :class:`~aqueue.transports.base.DeadLetterTakes` would then delete twice as many - the
#: letters after them lost).
_REPLAYING: PerLoop[dict[tuple[str, str], asyncio.Lock]] = PerLoop(dict)


async def replay_dead_letters(app: Aqueue, queue: str, limit: int | None = None) -> int:
    """Send the oldest ``limit`` (default all) dead letters of ``queue`` back to it; return how
    many. In this order: each letter's stored ``FAILURE`` is forgotten (the state reads
    ``PENDING`` until it runs again), it is published again as it was (a fresh delivery
    count), then it leaves the dead-letter queue. So a worker that runs it at once stores a
    record nothing deletes after, and a crash before the end leaves it in the dead-letter
    queue (published too, if the crash came after), never lost.

    Replays at once lose no letter. On a broker that implements
    :class:`~aqueue.transports.base.DeadLetterTakes` (all of aqueue's do), a replay deletes
    exactly the letters it sent; replays of one queue in one process take turns, and two from
    two processes at the same moment may send a letter twice (SQLite and Redis; RabbitMQ
    hands each letter to one of them).

    Raises:
        BrokerConnectionError: the broker or result backend cannot be reached.
        ConfigurationError: the broker cannot purge dead letters.
    """
    broker = await app.broker()
    admin = queue_admin(broker)
    count = limit if limit is not None else 1_000_000
    async with _REPLAYING.get().setdefault((broker.url, queue), asyncio.Lock()):
        if isinstance(broker, DeadLetterTakes):
            return await broker.take_dead_letters(
                queue, count, lambda letters: _send_back(app, broker, letters)
            )
        letters = await broker.dead_letters(queue, count)
        if letters:
            await _send_back(app, broker, letters)
            await admin.purge_dead_letters(queue, len(letters))
        return len(letters)


async def _send_back(app: Aqueue, broker: Broker, letters: list[DeadLetter]) -> None:
    """Forget the stored records of ``letters``, then publish them to their queues as they
    were.

    Raises:
        BrokerConnectionError: the broker or result backend cannot be reached.
    """
    outgoing: list[Outgoing] = []
    ids: list[str] = []
    for letter in letters:
        try:
            env = decode_envelope(letter.body)
        except SerializationError:
            # Not even an envelope: sent back as it is, in case the worker's code changed.
            outgoing.append(Outgoing(letter.queue, letter.body, f"raw-{time.time_ns()}"))
            continue
        ids.append(env["id"])
        priority = env.get("priority")
        outgoing.append(
            Outgoing(
                letter.queue, letter.body, env["id"], priority if isinstance(priority, int) else 0
            )
        )
    if ids and app.has_result_backend:
        await (await app.result_backend()).delete(ids)
    await broker.publish(outgoing)
