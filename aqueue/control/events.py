"""Task and worker events, for monitors and dashboards: ``aqueue worker -E`` and ``aqueue events``.

With ``-E`` (or ``worker_send_task_events=True``) a worker publishes, on the control transport's
``events`` channel, one JSON object per event, with Celery's event names and fields:

============== ==============================================================================
type           fields besides ``type``, ``hostname``, ``pid``, ``timestamp`` (epoch seconds)
============== ==============================================================================
task-received  ``uuid``, ``name``, ``args``, ``kwargs``, ``retries``, ``eta``, ``expires``,
               ``queue``, ``parent_id``, ``root_id``, ``group_id``
task-started   ``uuid``, ``name``
task-succeeded ``uuid``, ``name``, ``result`` (its ``repr``, shortened), ``runtime`` (s)
task-failed    ``uuid``, ``name``, ``exception`` (``repr``), ``traceback``, ``runtime`` (s)
task-retried   ``uuid``, ``name``, ``exception``, ``traceback``
task-revoked   ``uuid``, ``name``, ``reason``, ``terminated``, ``expired``
task-slow      ``uuid``, ``name``, ``runtime`` (s), ``deadline`` (s): past its soft deadline,
               still running (aqueue's own; :mod:`aqueue.worker.deadline`)
worker-online, worker-heartbeat (every 2 s), worker-offline:
               ``node``, ``concurrency``, ``active``, ``processed``, ``queues``, ``freq`` (s)
============== ==============================================================================

Events are published like Redis pub/sub messages: to whoever listens at that moment, with no
storage. A worker never waits on them: :class:`EventDispatcher` queues them and one coroutine
publishes what has gathered in one call, so a busy worker sends large batches. Without ``-E``
no dispatcher exists and the executor's hook is ``None``: no event is even built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from aqueue.control.protocol import EVENTS_CHANNEL, Table, dumps, heartbeats
from aqueue.exceptions import AqueueError
from aqueue.transports.base import ControlTransport

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.message import Message

__all__ = ["TASK_EVENTS", "EventDispatcher", "event_senders", "events"]

logger = logging.getLogger("aqueue.control.events")

TASK_EVENTS = (
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-slow",
)

#: Events kept while the transport is unreachable; older ones are dropped past this.
MAX_PENDING = 10_000


class EventDispatcher:
    """Publishes a worker's events in batches, never blocking the caller.

    Args:
        transport: the connected control transport.
        hostname: the worker's name, sent in every event.
    """

    def __init__(self, transport: ControlTransport, hostname: str) -> None:
        self.transport = transport
        self.hostname = hostname
        self.pid = os.getpid()
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0

    def send(self, kind: str, **fields: Any) -> None:
        """Queue one event; it is published within one turn of the loop (or dropped if more
        than 10,000 wait for an unreachable transport)."""
        event = {"type": kind, "hostname": self.hostname, "pid": self.pid, "timestamp": time.time()}
        event.update(fields)
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(0)
            self.dropped += 1
        self._pending.append(dumps(event))
        self._wake.set()

    def task_event(self, kind: str, msg: Message, fields: dict[str, Any]) -> None:
        """The executor's hook: a task event about ``msg`` with ``fields``."""
        self.send(kind, uuid=msg.id, name=msg.task, **fields)

    def start(self) -> None:
        """Start publishing in the background."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def stop(self) -> None:
        """Publish what is queued (best effort) and stop."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            # The flag, not only the cancel: redis-py can swallow a cancellation that lands in
            # the middle of a command (redis/redis-py#2028), and the loop must end even then.
            self._stopping = True
            self._wake.set()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        with contextlib.suppress(AqueueError):
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            try:
                await self.transport.publish(EVENTS_CHANNEL, batch)
            except AqueueError:
                self._pending[:0] = batch[-MAX_PENDING:]  # keep order; retried on the next wake
                raise

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            if self._stopping:
                return  # stop() publishes what is left
            self._wake.clear()
            try:
                await self._flush()
            except AqueueError as exc:
                logger.warning("publishing events failed: %s; retrying in 1s", exc)
                if not self._stopping:
                    await asyncio.sleep(1.0)
                self._wake.set()


async def events(
    app: Aqueue, on_ready: Callable[[], None] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Yield every event the app's workers publish from now on, as dicts, until cancelled.

    Args:
        on_ready: called once the subscription is live (events published after it returns are
            all seen).

    Raises:
        BrokerConnectionError: the control transport cannot be reached, or was closed (the
            app closed on this loop): the subscription ended.
        ConfigurationError: the app has no server for control.
    """
    transport = await app.control_transport()
    async with transport.subscribe(EVENTS_CHANNEL) as queue:
        if on_ready is not None:
            on_ready()
        while True:
            raw = await queue.get()
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                logger.warning("skipped an event that is not JSON: %r", raw[:80])
                continue
            if isinstance(event, dict):
                yield event


async def event_senders(app: Aqueue) -> tuple[int, int]:
    """``(live workers, those of them sending events)``, from the workers' heartbeats - so that
    a listener can say why no event comes.

    Raises:
        BrokerConnectionError: the control transport cannot be reached.
        ConfigurationError: the app has no server for control.
    """
    transport = await app.control_transport()
    _, entries = await transport.read(Table.WORKERS)
    beats = heartbeats(entries).values()
    return len(beats), sum(bool(beat.get("events")) for beat in beats)
