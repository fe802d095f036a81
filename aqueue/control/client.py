"""``app.control``: Celery's remote-control client - broadcast a command, gather the replies.

Every call subscribes to its own reply channel first, then publishes the command, then waits
at most ``timeout`` seconds; it returns early once every live worker (known from the heartbeats,
narrowed by ``destination``) has answered, so a cluster that is all up answers in one round
trip rather than in the full timeout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aqueue.control.protocol import CONTROL_CHANNEL, Command, Reply, Table, dumps, heartbeats
from aqueue.exceptions import DecodeError, SecurityError
from aqueue.results.record import ResultRecord
from aqueue.transports.base import SharedReplies
from aqueue.worker.ratelimit import parse_rate
from aqueue.worker.revoke import WAITING, revocation_record

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = ["DEFAULT_TIMEOUT", "Control", "Inspect", "by_worker"]

#: Seconds to wait for replies, as Celery's default.
DEFAULT_TIMEOUT = 1.0


def by_worker(replies: Sequence[Reply]) -> dict[str, Any]:
    """Replies as Celery returns them: ``{hostname: value}`` (``hostname#pid`` when two workers
    share a name; an error reads ``{"error": message}``)."""
    names = [r.hostname for r in replies]
    out: dict[str, Any] = {}
    for r in replies:
        key = r.hostname if names.count(r.hostname) == 1 else f"{r.hostname}#{r.pid}"
        out[key] = {"error": r.error} if r.error is not None else r.value
    return out


class Control:
    """Send commands to the app's workers (``app.control``), as Celery's ``app.control``.

    Every method raises ``BrokerConnectionError`` when the control transport cannot be reached
    and ``ConfigurationError`` when the app has none (see :mod:`aqueue.control`).
    """

    def __init__(self, app: Aqueue) -> None:
        self.app = app

    async def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        destination: Iterable[str] | None = None,
        reply: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        limit: int | None = None,
    ) -> list[Reply]:
        """Send ``command`` to every worker (or those named in ``destination``).

        Args:
            command: e.g. ``"ping"``, ``"active"``, ``"rate_limit"``.
            arguments: the command's arguments.
            destination: hostnames that should act; ``None`` for all.
            reply: wait for replies (else return ``[]`` at once).
            timeout: seconds to wait for replies at most.
            limit: stop after this many replies.

        Returns:
            The replies that arrived, in arrival order.

        Raises:
            BrokerConnectionError: the control transport cannot be reached, or was closed
                while waiting for replies.
        """
        transport = await self.app.control_transport()
        dest = tuple(destination) if destination is not None else None
        command_id = uuid.uuid4().hex
        cmd = Command(command_id, command, dict(arguments or {}), dest, None)
        if not reply:
            await transport.publish(CONTROL_CHANNEL, [cmd.encode()])
            return []
        reply_to = f"reply.{command_id}"
        cmd = Command(command_id, command, cmd.arguments, dest, reply_to)
        expected = await self._live_nodes(dest)
        replies: list[Reply] = []
        loop = asyncio.get_running_loop()
        async with transport.subscribe(reply_to) as queue:
            await transport.publish(CONTROL_CHANNEL, [cmd.encode()])
            deadline = loop.time() + timeout
            while limit is None or len(replies) < limit:
                if expected and expected <= {r.node for r in replies}:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # Not wait_for: on 3.11 it loses a cancel that comes with a reply, and the
                    # call would then wait out its timeout for a caller that gave up.
                    async with asyncio.timeout(remaining):
                        raw = await queue.get()
                except TimeoutError:
                    break
                try:
                    answered, got = Reply.decode(raw)
                except DecodeError:
                    continue
                if answered == command_id:
                    replies.append(got)
        return replies

    async def _live_nodes(self, destination: tuple[str, ...] | None) -> set[str]:
        """Node ids of the workers whose heartbeat is current (narrowed by ``destination``)."""
        transport = await self.app.control_transport()
        _, entries = await transport.read(Table.WORKERS)
        return {
            node
            for node, beat in heartbeats(entries).items()
            if destination is None or beat.get("hostname") in destination
        }

    def inspect(
        self, timeout: float = DEFAULT_TIMEOUT, destination: Iterable[str] | None = None
    ) -> Inspect:
        """Read-only questions to the workers: ``await app.control.inspect().active()``."""
        return Inspect(self, timeout, destination)

    async def ping(
        self, timeout: float = DEFAULT_TIMEOUT, destination: Iterable[str] | None = None
    ) -> list[Reply]:
        """Ask every live worker for ``"pong"``."""
        return await self.broadcast("ping", timeout=timeout, destination=destination)

    async def revoke(
        self,
        task_ids: str | Iterable[str],
        terminate: bool = False,
        *,
        reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[Reply]:
        """Revoke tasks on every worker, now and later (the steps are in
        :mod:`aqueue.worker.revoke`): store each id in the ``revoked`` table, store ``REVOKED``
        for those still waiting, then broadcast. Every handle of a task stored ``REVOKED`` learns
        it at once, the sender's own included when the result backend has a shared reply
        channel (:class:`~aqueue.transports.base.SharedReplies`: Redis).

        Args:
            task_ids: one id or several.
            terminate: also cancel the task where it is running now.
            reply: wait up to ``timeout`` seconds for the workers' acknowledgements.
            timeout: seconds to wait for replies.

        Returns:
            The workers' replies (empty unless ``reply``).

        Raises:
            BrokerConnectionError: the control transport or result backend cannot be reached.
            ConfigurationError: the app has no server for control (see :mod:`aqueue.control`).
        """
        app = self.app
        ids = [task_ids] if isinstance(task_ids, str) else list(dict.fromkeys(task_ids))
        if not ids:
            return []
        transport = await app.control_transport()
        ttl = app.conf.result_expires
        now = time.time()
        entry = dumps(
            {"terminate": terminate, "time": now, "expires": None if ttl is None else now + ttl}
        )
        for task_id in ids:
            await transport.put(Table.REVOKED, task_id, entry, ttl)
        if app.has_result_backend:
            # Before the broadcast, so that a worker's own record (terminated) comes last.
            await self._mark_waiting(ids)
        arguments = {"task_ids": ids, "terminate": terminate}
        if reply:
            return await self.broadcast("revoke", arguments, timeout=timeout)
        command = Command(uuid.uuid4().hex, "revoke", arguments)
        await transport.publish(CONTROL_CHANNEL, [command.encode()])
        return []

    async def _mark_waiting(self, ids: Sequence[str]) -> None:
        """Store ``REVOKED`` for the ids still waiting to run, so that waiters learn it now."""
        app = self.app
        backend = await app.result_backend()
        found = await backend.get_many(ids)
        items: list[tuple[str, bytes]] = []
        signing = app.conf.signing
        for task_id, raw in zip(ids, found, strict=True):
            try:
                record = (
                    ResultRecord.decode(raw, app.accept_results, signing, task_id)
                    if raw is not None
                    else None
                )
            except SecurityError:
                record = None  # not to be trusted: replaced by a signed REVOKED
            if record is None or record.status in WAITING:
                name = record.name if record is not None else None
                retries = record.retries if record is not None else 0
                revoked = revocation_record(task_id, "revoked", retries, name)
                items.append((task_id, revoked.encode("json", signing)))
        if items:
            # The sender's handle waits on its own reply channel, which only it knows: the
            # shared one reaches it wherever it is (SharedReplies).
            reply_to = None
            if isinstance(backend, SharedReplies):
                reply_to = dict.fromkeys([tid for tid, _ in items], backend.shared_reply_channel)
            await backend.store(items, app.conf.result_expires, reply_to)

    async def rate_limit(
        self,
        task_name: str,
        rate: str | float | None,
        *,
        destination: Iterable[str] | None = None,
        reply: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[Reply]:
        """Change ``task_name``'s rate limit on running workers (``None``/``0``: no limit).

        Sent to every worker (no ``destination``), the new rate is also stored, so workers
        started later use it too - until it is changed again; Celery forgets it on restart.

        Raises:
            ConfigurationError: ``rate`` is not a rate such as ``"10/m"``.
        """
        parsed = parse_rate(rate)
        text = None if parsed is None else str(rate)
        if destination is None:
            transport = await self.app.control_transport()
            value = None if text is None else text.encode()
            await transport.put(Table.RATE_LIMITS, task_name, value, None)
        return await self.broadcast(
            "rate_limit",
            {"task": task_name, "rate": text},
            destination=destination,
            reply=reply,
            timeout=timeout,
        )

    async def shutdown(
        self, destination: Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Reply]:
        """Ask workers to shut down gracefully (as SIGTERM does)."""
        return await self.broadcast("shutdown", destination=destination, timeout=timeout)

    async def add_consumer(
        self, queue: str, destination: Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Reply]:
        """Make workers consume ``queue`` too (until they restart)."""
        return await self._queue_command("add_consumer", queue, destination, timeout)

    async def cancel_consumer(
        self, queue: str, destination: Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Reply]:
        """Make workers stop consuming ``queue`` (until they restart)."""
        return await self._queue_command("cancel_consumer", queue, destination, timeout)

    async def _queue_command(
        self, command: str, queue: str, destination: Iterable[str] | None, timeout: float
    ) -> list[Reply]:
        return await self.broadcast(
            command, {"queue": queue}, destination=destination, timeout=timeout
        )


def _question(command: str, doc: str) -> Callable[[Inspect], Awaitable[dict[str, Any]]]:
    """An :class:`Inspect` method that broadcasts ``command`` and returns the replies."""

    async def ask(self: Inspect) -> dict[str, Any]:
        return await self._ask(command)

    ask.__name__ = ask.__qualname__ = command
    ask.__doc__ = doc
    return ask


class Inspect:
    """Celery's ``app.control.inspect()``: each method returns ``{hostname: reply}``."""

    def __init__(self, control: Control, timeout: float, destination: Iterable[str] | None) -> None:
        self.control = control
        self.timeout = timeout
        self.destination = tuple(destination) if destination is not None else None

    async def _ask(self, command: str) -> dict[str, Any]:
        replies = await self.control.broadcast(
            command, timeout=self.timeout, destination=self.destination
        )
        return by_worker(replies)

    ping = _question("ping", """``{hostname: "pong"}``.""")
    active = _question(
        "active",
        """Tasks running now, per worker: ``{"id", "name", "args", "kwargs", "time_start"...}``.""",
    )
    registered = _question(
        "registered", """Task names each worker can run (with their rate limits)."""
    )
    scheduled = _question(
        "scheduled",
        """Messages each worker holds for later: rate-limited ones waiting for a token.

        Messages delayed by ``countdown``/``eta`` wait in the broker, not in a worker: see
        ``aqueue status`` (the ``delayed`` column).
        """,
    )
    reserved = _question("reserved", """Messages each worker has fetched and not started yet.""")
    stats = _question(
        "stats", """Each worker's counters: pid, concurrency, processed, uptime, queues..."""
    )
    revoked = _question("revoked", """The revoked task ids each worker knows.""")
