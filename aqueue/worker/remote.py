"""A worker's side of remote control: answer commands, beat, keep revocations and rates current.

:class:`Remote` runs two coroutines next to the worker's fetcher and runners:

- the *listener* takes commands from the control channel (see :mod:`aqueue.control.protocol`)
  and answers those meant for this worker on their reply channel;
- the *heartbeat*, every :data:`HEARTBEAT_INTERVAL` seconds, stores this worker's counters in
  the ``workers`` table (read by ``aqueue status`` and by clients to know whom to wait for),
  and in the ``seen`` table for :data:`WORKER_LOST_TTL` (a worker gone from the first but not
  from the second stopped without shutting down: ``aqueue status`` shows it as lost),
  compares the ``revoked`` and ``rate_limits`` tables' versions with those it last read, and
  reads a table again when it changed - which also recovers a broadcast lost to a dropped
  connection - then sends a ``worker-heartbeat`` event when events are on.

Start-up order matters: the worker subscribes to the control channel *before* it reads the
tables, so a revocation is either in what it reads or in a broadcast it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aqueue.control.protocol import CONTROL_CHANNEL, Command, Reply, Table, dumps
from aqueue.exceptions import AqueueError, ConfigurationError, DecodeError
from aqueue.message import decode_envelope
from aqueue.transports.base import ControlTransport
from aqueue.worker.deadline import soft_deadline

if TYPE_CHECKING:
    from aqueue.worker.worker import Worker

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TTL",
    "RESUBSCRIBE_BACKOFF",
    "WORKER_LOST_TTL",
    "Remote",
    "active_info",
    "registered_info",
    "reserved_info",
    "scheduled_info",
]

logger = logging.getLogger("aqueue.worker")

#: Seconds between two heartbeats (Celery's event heartbeat is 2 s too).
HEARTBEAT_INTERVAL = 2.0
#: Seconds a heartbeat stays valid: a worker missing three in a row is taken for dead.
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL
#: Seconds a worker that stopped beating without shutting down is still shown as lost
#: (``aqueue status``), from its last heartbeat.
WORKER_LOST_TTL = 3600.0
#: Seconds between two attempts to subscribe to the control channel again after the
#: subscription ended under a running worker: the first pause, doubled up to the second.
RESUBSCRIBE_BACKOFF = (0.1, 5.0)

Handler = Callable[[dict[str, Any]], Any]


class Remote:
    """Remote control for one worker.

    Args:
        worker: the worker it answers for.
        transport: the connected control transport.
    """

    def __init__(self, worker: Worker, transport: ControlTransport) -> None:
        self.worker = worker
        self.transport = transport
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._rates_version = -1
        self._stop_after_reply = False
        self._handlers: dict[str, Handler] = {
            "ping": lambda args: "pong",
            "active": lambda args: active_info(worker),
            "registered": lambda args: registered_info(worker),
            "scheduled": lambda args: scheduled_info(worker),
            "reserved": lambda args: reserved_info(worker),
            "stats": lambda args: worker.stats(),
            "revoked": lambda args: sorted(worker.revocations.ids()),
            "revoke": self._revoke,
            "rate_limit": self._rate_limit,
            "shutdown": self._shutdown,
            "add_consumer": lambda args: worker.add_consumer(str(args["queue"])),
            "cancel_consumer": lambda args: worker.cancel_consumer(str(args["queue"])),
        }

    async def start(self) -> None:
        """Subscribe, load revocations and rate limits, beat once, then run in the background.

        Raises:
            BrokerConnectionError: the control transport cannot be reached.
        """
        commands = await self._stack.enter_async_context(self.transport.subscribe(CONTROL_CHANNEL))
        try:
            await self._sync(force=True)
            await self.beat()
        except BaseException:
            await self._stack.aclose()
            raise
        self._tasks = [
            asyncio.create_task(self._listen(commands)),
            asyncio.create_task(self._beat_loop()),
        ]

    async def stop(self) -> None:
        """Stop listening and beating, and remove this worker's heartbeat."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(AqueueError):
            await self.transport.put(Table.WORKERS, self.worker.node, None, None)
            await self.transport.put(Table.SEEN, self.worker.node, None, None)
        await self._stack.aclose()

    # -- heartbeat and resync ----------------------------------------------------------------

    async def beat(self) -> None:
        """Store this worker's heartbeat (valid for :data:`HEARTBEAT_TTL` seconds)."""
        info = self.worker.stats()
        info["timestamp"] = time.time()
        info["freq"] = HEARTBEAT_INTERVAL
        beat = dumps(info)
        await self.transport.put(Table.WORKERS, self.worker.node, beat, HEARTBEAT_TTL)
        await self.transport.put(Table.SEEN, self.worker.node, beat, WORKER_LOST_TTL)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self.beat()
                await self._sync(force=False)
            except AqueueError as exc:
                logger.warning("heartbeat failed: %s", exc)
            if self.worker.events is not None:
                self.worker.events.send("worker-heartbeat", **self.worker.event_info())

    async def _sync(self, force: bool) -> None:
        """Read the revoked and rate-limit tables again if they changed since the last read."""
        revocations = self.worker.revocations
        if force or await self.transport.version(Table.REVOKED) != revocations.version:
            version, entries = await self.transport.read(Table.REVOKED)
            revocations.merge(version, entries)
        if force or await self.transport.version(Table.RATE_LIMITS) != self._rates_version:
            version, entries = await self.transport.read(Table.RATE_LIMITS)
            for name, raw in entries.items():
                try:
                    self.worker.set_rate_limit(name, raw.decode())
                except (ConfigurationError, UnicodeDecodeError) as exc:
                    logger.warning("ignored the stored rate limit of %s: %s", name, exc)
            self._rates_version = version

    # -- commands ----------------------------------------------------------------------------

    async def _listen(self, commands: asyncio.Queue[bytes]) -> None:
        """Answer commands until cancelled (:meth:`stop`). When the subscription ends under
        the worker (its transport closed, or its reader failed), log it and subscribe again,
        pausing :data:`RESUBSCRIBE_BACKOFF` between attempts: a worker that stopped listening
        would never answer remote control again."""
        while True:
            try:
                await self._take(commands)
            except AqueueError as exc:
                logger.warning("remote control: the control subscription ended (%s)", exc)
            commands = await self._subscribe_again()

    async def _subscribe_again(self) -> asyncio.Queue[bytes]:
        """Leave the ended subscription and make a new one, retrying with a growing pause;
        then read the tables again (a revocation broadcast meanwhile was missed)."""
        pause = RESUBSCRIBE_BACKOFF[0]
        while True:
            await asyncio.sleep(pause)
            try:
                await self._stack.aclose()
            except Exception as exc:  # leaving a dead subscription must not stop listening
                logger.warning("remote control: leaving the ended subscription failed: %s", exc)
            self._stack = contextlib.AsyncExitStack()
            try:
                commands = await self._stack.enter_async_context(
                    self.transport.subscribe(CONTROL_CHANNEL)
                )
            except AqueueError as exc:
                pause = min(pause * 2, RESUBSCRIBE_BACKOFF[1])
                logger.warning(
                    "remote control: subscribing again failed (%s); retrying in %gs", exc, pause
                )
                continue
            logger.info("remote control: subscribed to the control channel again")
            try:
                await self._sync(force=True)
            except AqueueError as exc:  # the heartbeat's next sync reads them
                logger.warning("remote control: reading revocations and rate limits: %s", exc)
            return commands

    async def _take(self, commands: asyncio.Queue[bytes]) -> None:
        """Answer the commands ``commands`` receives, until its subscription ends.

        Raises:
            BrokerConnectionError: the subscription ended (see :class:`.fanout.SubscriberQueue`).
        """
        while True:
            raw = await commands.get()
            try:
                command = Command.decode(raw)
            except DecodeError as exc:
                logger.warning("ignored a control message: %s", exc)
                continue
            if command.for_worker(self.worker.hostname):
                await self._answer(command)

    async def _answer(self, command: Command) -> None:
        handler = self._handlers.get(command.command)
        reply = Reply(self.worker.hostname, self.worker.pid, self.worker.node)
        if handler is None:
            reply = Reply(
                reply.hostname, reply.pid, reply.node, error=f"unknown command {command.command!r}"
            )
        else:
            try:
                value = handler(command.arguments)
                if asyncio.iscoroutine(value):
                    value = await value
                reply = Reply(reply.hostname, reply.pid, reply.node, value)
            except Exception as exc:  # a bad command or a handler's bug: answered, never fatal
                reply = Reply(reply.hostname, reply.pid, reply.node, error=str(exc))
        logger.info(
            "control: %s from a client%s",
            command.command,
            f" ({reply.error})" if reply.error else "",
        )
        if command.reply_to is not None:
            try:
                await self.transport.publish(command.reply_to, [reply.encode(command.id)])
            except AqueueError as exc:
                logger.warning("could not reply to %s: %s", command.command, exc)
        if self._stop_after_reply:
            # Only now: stopping ends this listener, which must not cut its own reply short.
            self.worker.app.spawn(self.worker.stop())

    def _revoke(self, args: dict[str, Any]) -> dict[str, Any]:
        given = args["task_ids"]
        ids = [given] if isinstance(given, str) else [str(i) for i in given]
        expires = args.get("expires")
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            # Not epoch seconds (a foreign client's): every revocation check would fail on it.
            expires = None
        if expires is None and self.worker.app.conf.result_expires is not None:
            expires = time.time() + self.worker.app.conf.result_expires
        self.worker.revocations.add(ids, expires)
        terminated = []
        if args.get("terminate"):
            terminated = [i for i in ids if self.worker.terminate(i)]
        if terminated:
            logger.info("terminating revoked task(s) %s", ", ".join(terminated))
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked", "terminated": terminated}

    def _rate_limit(self, args: dict[str, Any]) -> dict[str, Any]:
        name, rate = str(args["task"]), args.get("rate")
        if name not in self.worker.app.tasks:
            raise ValueError(f"unknown task {name!r}")
        self.worker.set_rate_limit(name, rate)
        return {"ok": "new rate limit set successfully", "task": name, "rate": rate}

    def _shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        logger.warning("shutdown requested by remote control: warm shutdown")
        self._stop_after_reply = True
        return {"ok": "shutting down"}


# -- what inspect commands answer ------------------------------------------------------------


def active_info(worker: Worker) -> list[dict[str, Any]]:
    """The tasks running in ``worker`` now (``inspect active``), as Celery lists them, with
    aqueue's ``runtime`` (seconds running, by the worker's clock) and ``soft_deadline``
    (seconds, or ``None``: see :mod:`aqueue.worker.deadline`)."""
    executor = worker.executor
    if executor is None:
        return []
    started = executor.terminable.started
    default, tasks = worker.app.conf.task_soft_deadline, worker.app.tasks
    now = time.time()
    out = []
    for task_id, request in executor.active.items():
        since = started.get(task_id)
        out.append(
            {
                "id": task_id,
                "name": request.task,
                "args": list(request.args),
                "kwargs": request.kwargs,
                "queue": request.queue,
                "retries": request.retries,
                "delivery_count": request.delivery_count,
                "time_start": since,
                "runtime": None if since is None else max(0.0, now - since),
                "soft_deadline": soft_deadline(tasks.get(request.task or ""), default),
                "hostname": worker.hostname,
                "worker_pid": worker.pid,
            }
        )
    return out


def registered_info(worker: Worker) -> list[str]:
    """Task names ``worker`` can run, each with ``[rate_limit=...]`` when it has one."""
    out = []
    for name in sorted(worker.app.tasks):
        rate = worker.app.tasks[name].rate_limit
        out.append(f"{name} [rate_limit={rate}]" if rate else name)
    return out


def _described(body: bytes) -> dict[str, Any]:
    try:
        env = decode_envelope(body)
    except DecodeError:
        return {"id": None, "name": None}
    return {
        "id": env["id"],
        "name": env["task"],
        "args": env.get("args"),
        "kwargs": env.get("kwargs"),
        "eta": env.get("eta"),
        "priority": env.get("priority"),
    }


def reserved_info(worker: Worker) -> list[dict[str, Any]]:
    """Messages ``worker`` has fetched and not started (``inspect reserved``)."""
    active = set(worker.active)
    out = []
    for delivery in worker.held():
        described = _described(delivery.body)
        if described["id"] not in active:
            out.append({**described, "queue": delivery.queue, "hostname": worker.hostname})
    return out


def scheduled_info(worker: Worker) -> list[dict[str, Any]]:
    """Messages ``worker`` holds for later: rate-limited ones waiting for a token."""
    if worker.gate is None:
        return []
    out = []
    for parked in worker.gate.parked():
        rate = worker.gate.rate(parked.task)
        out.append(
            {
                "request": {**_described(parked.delivery.body), "queue": parked.delivery.queue},
                "waiting_since": parked.since,
                "reason": f"rate_limit {rate:g}/s" if rate else "rate_limit",
                "hostname": worker.hostname,
            }
        )
    return out
