"""The Redis broker: one stream per (queue, priority), read through a consumer group.

Relies on these Redis (>= 6.2) semantics; key names are in :mod:`aqueue.transports.redis.keys`:

- **Leases are the pending entries list.** ``XREADGROUP ... >`` hands an entry to one consumer
  of the group and records it as pending with an idle time; nobody else gets it from ``>``.
  Acking is ``XACK`` + ``XDEL``, so streams only hold unfinished messages.
- **Visibility timeout is idle time.** An entry pending for longer than the visibility timeout
  (its consumer died, or stopped renewing) is taken over with ``XAUTOCLAIM ... JUSTID``.
  Renewing is ``XCLAIM <id> JUSTID`` by the owner, which resets the idle time.
- **Priorities are separate streams.** Levels 0..9 of a queue are ten streams; the fetch script
  reads them best first with exact counts, so nothing is leased that is not handed out.
- **Delayed messages** wait in one sorted set scored by eta (ms); the fetch script moves the due
  ones to their streams, atomically with the read.
- **Blame (RunTracking).** An entry carries its counts in fields ``n`` (the delivery count,
  default 1) and ``k`` (strikes, default 0). :meth:`RedisBroker.start` sets the lease's
  delivery counter in the pending entries list to 2 (running) or 3 (running as an isolated
  suspect) with ``XCLAIM ... RETRYCOUNT``. When a lease runs out, the fetch script looks at the
  counter: still 1 (never started, e.g. prefetched) - the entry is handed out unchanged; 2 or 3
  - it is added again with ``n`` one higher (and ``k`` for 3) and the old entry removed.
  :meth:`RedisBroker.release` (a graceful hand-back) copies the counts unchanged.
  :meth:`RedisBroker.start_written` sets the same marks without waiting for the answer (an idle
  worker's runs, :class:`~aqueue.transports.base.WrittenStarts`): the command written to the
  socket is the record, delivered even if the worker dies next.
- **Nothing trusted.** Fields ``n`` and ``k`` are checked here (a malformed one becomes the
  delivery's :attr:`~aqueue.transports.base.Delivery.defect`, which the worker dead-letters);
  a malformed delayed member is moved to ``aqueue:delayed-rejected`` with the reason and logged,
  and the others keep flowing.
- **Dead consumers** (killed workers) stay in a group's consumer list; the fetch script's
  reclaim pass removes those that hold nothing and have been idle for a visibility timeout.

- **Replication (optional).** With ``wait_replicas`` (a transport option), a publish is
  followed on its connection by ``WAIT <wait_replicas> <wait_timeout ms>`` in the same round
  trip, and counts as done only when that many replicas have it: a failover to one of them then
  cannot lose it. Fewer in time raises :class:`~aqueue.exceptions.BrokerConnectionError`, so the
  sender tries again (the message may then be stored twice). With Sentinel, a primary that
  every sentinel names, with no failover under way, and that has fewer replicas able to take
  its place than ``wait_replicas`` (right after a failover, before the old primary rejoins as
  a replica) needs only those (:meth:`SharedClient.replicas_in_sync
  <aqueue.transports.redis.client.SharedClient.replicas_in_sync>`): sends go on, with the
  redundancy there is.

- **Key layout.** Names come from the client's layout (:mod:`aqueue.transports.redis.keys`):
  on one server (or a primary with replicas, with or without Sentinel) one delayed set serves
  every queue and a fetch runs one script and one blocking read over all its queues; on Redis
  Cluster (:mod:`aqueue.transports.redis.cluster`) each queue's keys share a hash tag, and every
  script runs per queue: publishing and acking once per queue touched, fetching once per queue
  in the order given, and a blocking read per queue stays in flight until it returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from aqueue.exceptions import BrokerConnectionError, BrokerError, ConfigurationError
from aqueue.transports import SENTINEL_OPTIONS, SENTINEL_SCHEMES, scheme, visibility_timeout
from aqueue.transports.base import (
    ConnectionOptions,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueDepth,
    SendLetters,
)
from aqueue.transports.redis import admin as redis_admin
from aqueue.transports.redis import keys, lua
from aqueue.transports.redis.client import SharedClient, redacted_url, redis_errors
from aqueue.transports.redis.role import RedisRole

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

_OPTIONS = frozenset({"visibility_timeout", "wait_replicas", "wait_timeout", *SENTINEL_OPTIONS})
_WAIT_TIMEOUT = 1.0  # seconds a publish waits for wait_replicas replicas by default
# Longest a blocking read waits before the fetch script runs again: delayed messages published
# by other clients become due without waking us, so this bounds how late they can be.
_MAX_BLOCK = 1.0
# Entry ids per XACK, XDEL or XCLAIM in the ack script: Lua's unpack() is bounded.
_ACK_CHUNK = 1000
# Messages added per publish script run (a larger batch takes several runs).
_PUBLISH_CHUNK = 1000
# Delayed messages moved per fetch script run; more are moved by the next run, right away.
_MOVE_LIMIT = 1000

# The Lua scripts are in lua/<name>.lua, each with its KEYS and ARGV.


@dataclass(frozen=True, slots=True)
class _Lease:
    """A delivery's token: where the entry lives, and when this consumer got it."""

    stream: str
    entry_id: bytes
    received: float  # time.monotonic() when the lease began or was last renewed


@dataclass(frozen=True, slots=True)
class _Part:
    """The streams of the queues sharing one delayed set, best first: one fetch script run."""

    delayed: str
    rejected: str  # where malformed delayed members are set aside
    prefix: str  # what every stream of these queues starts with
    streams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The streams one ``queues`` sequence reads, best first, and what each one is."""

    streams: tuple[str, ...]
    origin: Mapping[str, tuple[str, int, int]]  # stream -> (queue, priority, rank in streams)
    parts: tuple[_Part, ...]  # one on a single server; one per queue on a cluster


_T = TypeVar("_T")


def _by_shard(items: Iterable[_T], shard: Callable[[_T], Hashable]) -> list[list[_T]]:
    """``items`` grouped by ``shard(item)``, groups in order of first appearance, items in
    their order: one group per script run (one on a single server)."""
    groups: dict[Hashable, list[_T]] = {}
    for item in items:
        groups.setdefault(shard(item), []).append(item)
    return list(groups.values())


@dataclass(frozen=True, slots=True)
class _Scripts:
    """The Lua scripts, registered once per client; calls are EVALSHA (loaded on NOSCRIPT)."""

    fetch: AsyncScript
    publish: AsyncScript
    ack: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    forget: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> _Scripts:
        return cls(**{f.name: lua.register(client, f.name) for f in dataclass_fields(cls)})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _lossy_text(value: bytes | str) -> str:
    """``value`` as text for a log line, undecodable bytes replaced: what the fetch script
    reports comes from members and consumer names anyone may have written, and a reason it
    cut at 80 bytes may end mid-character; a strict decode would fail the fetch that leased
    messages in the same script run."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _epoch(value: bytes | None) -> float:
    """A dead letter's time (epoch seconds), 0.0 when missing or not a number: an entry
    written by hand must not fail the listing of the others."""
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


_COUNT = re.compile(rb"[1-9][0-9]{0,8}")  # field n: a delivery count, 1 .. 999,999,999
_STRIKES = re.compile(rb"0|[1-9][0-9]{0,8}")  # field k: strikes, 0 .. 999,999,999


def _counts(n: bytes | None, k: bytes | None) -> tuple[int, int, str | None]:
    """An entry's ``(delivery count, strikes, defect)`` from its raw fields ``n`` and ``k``
    (``None`` or empty: absent). A malformed field gives the defaults and a defect naming it."""
    count = strikes = None
    if not n:
        count = 1
    elif _COUNT.fullmatch(n):
        count = int(n)
    if not k:
        strikes = 0
    elif _STRIKES.fullmatch(k):
        strikes = int(k)
    if count is not None and strikes is not None:
        return count, strikes, None
    if count is None:
        return 1, 0, f"stream entry field 'n' must be a delivery count (1 or more), not {n!r:.40}"
    return 1, 0, f"stream entry field 'k' must be a count of strikes (0 or more), not {k!r:.40}"


def _delayed_member(stream: str, message_id: str, body: bytes) -> bytes:
    """Encode a delayed message as ``<len>:<stream><len>:<message id><body>``.

    The message id makes members unique per message, so equal bodies are kept apart.
    """
    target, mid = stream.encode(), message_id.encode()
    return b"%d:%s%d:%s%s" % (len(target), target, len(mid), mid, body)


class RedisBroker(RedisRole):
    """A :class:`~aqueue.transports.base.Broker` on Redis Streams (``redis://``, ``rediss://``).

    Args:
        url: ``redis://[[user]:password@]host:port/db``, ``rediss://...`` for TLS, or a
            Sentinel URL (:mod:`aqueue.transports.redis.sentinel`).
        options: broker transport options: ``visibility_timeout`` (seconds, default 30) is how
            long a fetched message stays leased without :meth:`renew`; ``wait_replicas``
            (default 0: none) and ``wait_timeout`` (seconds, default 1) make each publish wait
            until that many replicas have it (Redis's ``WAIT``; see the module's docstring);
            with a Sentinel URL, ``master_name`` and ``sentinel_kwargs`` (Celery's).

    Raises:
        ConfigurationError: an option is unknown or invalid.
    """

    def __init__(
        self, url: str, options: Mapping[str, Any], client: SharedClient | None = None
    ) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown broker_transport_options for Redis: {sorted(unknown)}; "
                f"supported: {sorted(_OPTIONS)}"
            )
        sentinel = {k: options[k] for k in SENTINEL_OPTIONS if k in options}
        if sentinel and scheme(url) not in SENTINEL_SCHEMES:
            raise ConfigurationError(
                f"broker_transport_options {sorted(sentinel)} apply to Redis Sentinel URLs "
                f"(redis+sentinel://..., sentinel://...), not to {redacted_url(url)}"
            )
        own = None if client is not None else ConnectionOptions(sentinel=sentinel or None)
        super().__init__(url, client, own)
        self._visibility = visibility_timeout(options)
        self._wait = _replication(options)  # (replicas, timeout in seconds), or None
        if self._wait is not None and self._keys.cluster:
            raise ConfigurationError(
                "broker_transport_options['wait_replicas'] is not supported on Redis Cluster: "
                "WAIT counts one node's replicas, and a publish spans several nodes"
            )
        # Unique per instance: the group's pending list tells leases apart by consumer name.
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._scripts: _Scripts | None = None
        self._unblock_refused = False  # the ACL user may not CLIENT UNBLOCK (see _woken)
        self._groups: set[str] = set()  # streams whose consumer group exists
        self._plans: dict[tuple[str, ...], _Plan] = {}
        # Leased deliveries a blocking read returned beyond `limit`, handed out by later fetches
        # (or handed back by renew(): a consumer that renews without fetching is busy).
        self._buffer: list[Delivery] = []
        self._next_due = 0.0  # epoch seconds of the earliest delayed message known (0: unknown)
        self._next_reclaim = 0.0  # time.monotonic() of the next XAUTOCLAIM pass
        self._cursors: dict[str, bytes] = {}  # XAUTOCLAIM cursor per stream
        # Cluster: the blocking read in flight per fetch part (its streams), until it returns.
        self._reads: dict[tuple[str, ...], asyncio.Task[list[Delivery]]] = {}
        # The streams a blocking read emptied (it returned fewer than it could take), so the
        # next fetch of them may block again at once, with no fetch script run before (see
        # fetch); and the time.monotonic() of the last fetch script run.
        self._drained: tuple[str, ...] | None = None
        self._script_ran = 0.0
        # Fetch script runs whose fetch was cancelled, until they end and buffer their leases.
        self._orphans: set[asyncio.Task[list[Delivery]]] = set()

    def __repr__(self) -> str:
        return f"RedisBroker({redacted_url(self._url)!r}, consumer={self._consumer!r})"

    async def close(self) -> None:
        """Release buffered deliveries and close the client. Idempotent.

        Messages handed out and not acked stay leased to this consumer until the visibility
        timeout, then are delivered again. Errors while releasing are logged, not raised.
        """
        client, scripts = self._client, self._scripts
        if client is None or scripts is None:
            return
        try:
            with redis_errors(self._url, "close"):
                await self._finish_orphans()
                await self._finish_reads()
                buffered, self._buffer = self._buffer, []
                if buffered:
                    await self._release(scripts, buffered)
                for streams in self._by_stream_shard(sorted(self._groups), str):
                    await scripts.forget(keys=streams, args=[keys.GROUP, self._consumer])
        except BrokerError as exc:
            log.warning("closing %r: %s", self, exc)
        finally:
            self._scripts = None
            self._groups.clear()
            await self._release_client()

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Add ready messages to their streams and delayed ones to the delayed set.

        One publish script run (EVALSHA) per call on one server (a batch past
        :data:`_PUBLISH_CHUNK` messages is split, to bound how long one run holds the server);
        on a cluster one per queue, on their nodes at once. A priority outside 0..9 is clamped
        to the nearest level.

        Raises:
            BrokerConnectionError: the server cannot be reached; nothing may be assumed stored.
        """
        if not messages:
            return
        client, scripts = await self._session()
        now = time.time()
        earliest = math.inf
        runs: list[tuple[list[Any], list[Any]]] = []
        layout = self._keys
        stream_key = layout.stream
        # A script run per delayed set: one per queue on a cluster, the only one on one server.
        batches = _by_shard(messages, _queue_of) if layout.cluster else (messages,)
        for batch in batches:
            streams: list[str] = [layout.delayed(batch[0].queue)]
            bodies: list[Any] = []
            delayed: list[Any] = []
            for m in batch:
                stream = stream_key(m.queue, min(max(m.priority, 0), 9))
                if m.eta is not None and m.eta > now:
                    delayed.append(m.eta * 1000)
                    delayed.append(_delayed_member(stream, m.message_id, m.body))
                    earliest = min(earliest, m.eta)
                else:
                    streams.append(stream)
                    bodies.append(m.body)
            runs += _runs(streams, bodies, delayed)
        with redis_errors(self._url, "publish"):
            if self._wait is not None:
                await self._publish_replicated(client, scripts, runs)
            elif len(runs) == 1:
                await scripts.publish(keys=runs[0][0], args=runs[0][1])
            elif self._keys.cluster:  # one run per queue (and chunk), on their nodes at once
                await _gather(scripts.publish(keys=k, args=a) for k, a in runs)
            else:  # bound how long one script run holds the server
                for run_keys, run_args in runs:
                    await scripts.publish(keys=run_keys, args=run_args)
        if earliest < math.inf:
            self._next_due = min(self._next_due, earliest) if self._next_due else earliest

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` messages from ``queues``, waiting up to ``timeout`` seconds.

        One fetch script run (EVALSHA) moves due delayed messages, reclaims expired leases when a
        check is due (every visibility_timeout/4 seconds) and leases ready entries best first.
        When nothing is ready it blocks in ``XREADGROUP`` for at most ~1 s at a time, less when a
        known delayed message or a reclaim check is due sooner, then runs the script again.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if limit <= 0 or not queues:
            return []
        client, scripts = await self._session()
        plan = self._plan(queues)
        deadline = time.monotonic() + max(timeout, 0.0)
        with redis_errors(self._url, "fetch"):
            if self._reads:
                self._harvest_reads()
            if self._buffer:
                held = await self._take_buffered(scripts, plan, limit)
                if held:
                    return held
            await self._ensure_groups(client, plan.streams)
            recreated = False
            while True:
                # Right after a blocking read that left nothing behind, the script would find
                # nothing new unless a check is due: block again at once, which saves a
                # round trip (and the wake-ups it costs) on every task at a light load. The
                # script still runs at least every _MAX_BLOCK seconds, and whenever no
                # blocking read follows (a poll, timeout 0, or a check due now): skipping
                # both would return nothing while messages are ready.
                drained, self._drained = self._drained == plan.streams, None
                try:
                    wait = min(deadline - time.monotonic(), self._until_next_check())
                    if not drained or wait <= 0:
                        found = await self._kept(self._read_ready(scripts, plan, limit))
                        if found:
                            return found
                        wait = min(deadline - time.monotonic(), self._until_next_check())
                    if wait > 0:
                        found = await self._read_blocking(client, plan, limit, wait)
                        if found:
                            return found
                except redis.exceptions.ResponseError as exc:
                    # The group vanished (FLUSHDB, key deleted): create it again, once.
                    if "NOGROUP" not in str(exc) or recreated:
                        raise
                    recreated = True
                    self._groups.difference_update(plan.streams)
                    await self._ensure_groups(client, plan.streams)
                    continue
                if time.monotonic() >= deadline:
                    return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """XACK + XDEL the deliveries' entries, one XACK and one XDEL per stream, in one script
        run (atomic). Acking twice is harmless.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._on_leases("ack", self._ack_only, deliveries)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Re-add the entries this consumer still holds, keeping their delivery count.

        They are delivered again at once, behind the messages already waiting in their stream.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._on_leases("release", self._release, deliveries)

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Reset the idle time of the entries this consumer still holds (one script run).

        A delivery whose lease was already taken over by another consumer is left alone.
        Buffered deliveries (leased beyond what a fetch asked for, and not handed out yet) are
        handed back at the same time (one more script run, only when there are some): a
        consumer that renews without fetching is busy, and its buffer would otherwise stay
        leased to it, unrenewed, until the visibility timeout gave it to another.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._on_leases("renew", self._renew, deliveries)
        if self._buffer:
            await self._hand_back_buffer()

    async def start(
        self, runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> list[bool]:
        """Mark leases as running (see :class:`~aqueue.transports.base.RunTracking`), one
        script run: the lease's delivery counter becomes 2, or 3 for an isolated suspect.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if not runs:
            await self.ack(acks)
            return []
        _, scripts = await self._session()
        # A lease taken or renewed less than half a timeout ago is still ours (reclaiming
        # needs a whole timeout of idleness, and leases are renewed every third): those are
        # marked with the acks, in one XCLAIM per stream; the others only after an owner check
        # (lua/ack.lua, lua/renew.lua).
        fresh_since = time.monotonic() - self._visibility / 2
        fresh = [(d, i) for d, i in runs if d.token.received >= fresh_since]
        stale = [(d, i) for d, i in runs if d.token.received < fresh_since]
        with redis_errors(self._url, "start"):
            await self._ack_and_mark(scripts, acks, fresh)
            if not stale:
                return [True] * len(runs)
            marks = [3 if isolated else 2 for _, isolated in stale]
            kept = await self._claim_own(scripts, [d for d, _ in stale], marks)
        lost = {id(d) for (d, _), ours in zip(stale, kept, strict=True) if not ours}
        return [id(d) not in lost for d, _ in runs]

    async def start_written(
        self, runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> Awaitable[None] | None:
        """Write the acks of ``acks`` and the start marks of ``runs`` (see :meth:`start`), one
        script call, and return once the command is handed to the operating system, before
        Redis answers, with the awaitable of the answer
        (:class:`~aqueue.transports.base.WrittenStarts`). ``None``, having sent nothing, when
        a lease of ``runs`` is older than half a visibility timeout (its mark needs an owner
        check: call :meth:`start`) or on Redis Cluster.

        Raises:
            BrokerConnectionError: the command could not be written.
        """
        fresh_since = time.monotonic() - self._visibility / 2
        if self._keys.cluster or any(d.token.received < fresh_since for d, _ in runs):
            return None
        client, scripts = await self._session()
        [(streams, args)] = self._ack_runs(acks, runs)
        pool = client.connection_pool
        with redis_errors(self._url, "start"):
            conn = await pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
            try:
                # EVAL, the script's text, not EVALSHA: a Redis that has not loaded it (the
                # first worker, a restart) would answer NOSCRIPT, and the marks would wait for
                # that answer to be read, which a worker that dies meanwhile never does. Redis
                # keeps the compiled script by its hash, so only the hash is computed again.
                await conn.send_command("EVAL", scripts.ack.script, len(streams), *streams, *args)
            except BaseException:
                await conn.disconnect()
                await pool.release(conn)
                raise
        return self._start_answer(pool, conn)

    async def _start_answer(
        self,
        pool: aioredis.ConnectionPool,
        conn: aioredis.connection.AbstractConnection,
    ) -> None:
        """Read the answer to :meth:`start_written`'s command, then give the connection back
        (dropped if the answer was not read whole).

        Raises:
            BrokerConnectionError: no answer (the acks and marks may or may not be made).
            BrokerError: Redis refused the command.
        """
        answered = False  # read whole, error or not: the connection can serve again
        try:
            with redis_errors(self._url, "start"):
                try:
                    await conn.read_response()
                except redis.exceptions.ResponseError:
                    answered = True
                    raise
                answered = True
        finally:
            if not answered:
                await conn.disconnect()
            await pool.release(conn)

    def _ack_runs(
        self, acks: Sequence[Delivery], runs: Sequence[tuple[Delivery, bool]]
    ) -> list[tuple[list[str], list[bytes | str | int]]]:
        """The ack script's ``(KEYS, ARGV)`` per run (one per cluster shard touched) that acks
        ``acks`` then marks ``runs`` as running (see lua/ack.lua)."""
        groups: dict[tuple[int, str], list[bytes]] = {}  # (mark, stream): 0 marks the acks
        for delivery in acks:
            groups.setdefault((0, delivery.token.stream), []).append(delivery.token.entry_id)
        for delivery, isolated in runs:
            lease: _Lease = delivery.token
            groups.setdefault((3 if isolated else 2, lease.stream), []).append(lease.entry_id)
        ordered = sorted(groups.items(), key=lambda g: g[0][0])  # acks first
        found = []
        for shard in self._by_stream_shard(ordered, lambda g: g[0][1]):
            streams: list[str] = []
            acked = 0
            args: list[bytes | str | int] = []
            for (mark, stream), ids in shard:
                for at in range(0, len(ids), _ACK_CHUNK):  # unpack() in Lua has a stack limit
                    chunk = ids[at : at + _ACK_CHUNK]
                    streams.append(stream)
                    args += [mark, len(chunk), *chunk] if mark else [len(chunk), *chunk]
                    acked += not mark
            found.append((streams, [keys.GROUP, self._consumer, acked, *args]))
        return found

    async def _ack_and_mark(
        self,
        scripts: _Scripts,
        acks: Sequence[Delivery],
        runs: Sequence[tuple[Delivery, bool]],
    ) -> None:
        """Run the ack script: XACK + XDEL ``acks``, then mark ``runs`` (leases known to be
        ours) as running; one XACK/XDEL or XCLAIM per stream and kind (see lua/ack.lua)."""
        calls = [scripts.ack(keys=k, args=a) for k, a in self._ack_runs(acks, runs)]
        await _gather(calls)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """XADD the body and ``reason`` to the queue's dead-letter stream and ack, in one MULTI.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        lease: _Lease = delivery.token
        client, _ = await self._session()
        with redis_errors(self._url, "dead_letter"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    self._keys.dlq(delivery.queue),
                    {"b": delivery.body, "r": reason, "t": repr(time.time())},
                )
                pipe.xack(lease.stream, keys.GROUP, lease.entry_id)
                pipe.xdel(lease.stream, lease.entry_id)
                await pipe.execute()

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` of ``queue``'s dead letters, oldest first (XRANGE).

        An entry not written by aqueue is listed as it can be read: undecodable reason bytes
        replaced, a missing or malformed time as 0.0.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        return [letter for _, letter in await self._read_dead_letters(queue, limit)]

    async def take_dead_letters(self, queue: str, limit: int, send: SendLetters) -> int:
        """Read the oldest ``limit`` dead letters of ``queue`` (XRANGE), await
        ``send(letters)``, then XDEL exactly those entries (see
        :class:`~aqueue.transports.base.DeadLetterTakes`: two takes from two processes at
        the same moment may both send a letter, never lose one).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        taken = await self._read_dead_letters(queue, limit)
        if not taken:
            return 0
        await send([letter for _, letter in taken])
        client, _ = await self._session()
        key = self._keys.dlq(queue)
        ids = [entry_id for entry_id, _ in taken]
        with redis_errors(self._url, "take_dead_letters"):
            for start in range(0, len(ids), 1_000):
                await client.xdel(key, *ids[start : start + 1_000])
        return len(taken)

    async def _read_dead_letters(self, queue: str, limit: int) -> list[tuple[bytes, DeadLetter]]:
        """The oldest ``limit`` dead letters of ``queue`` with their stream entry ids.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if limit <= 0:
            return []
        client, _ = await self._session()
        with redis_errors(self._url, "dead_letters"):
            entries: Any = await client.xrange(self._keys.dlq(queue), count=limit)
        return [
            (
                bytes(entry_id),
                DeadLetter(
                    queue=queue,
                    body=bytes(fields.get(b"b", b"")),
                    reason=_lossy_text(fields.get(b"r", b"")),
                    time=_epoch(fields.get(b"t")),
                ),
            )
            for entry_id, fields in entries or []
        ]

    # -- administration (QueueAdmin; done in aqueue.transports.redis.admin) -------------------

    async def queue_depths(self, queues: Sequence[str] | None = None) -> list[QueueDepth]:
        """Count each queue's ready, delayed, unacked and dead messages (see redis_admin)."""
        client, _ = await self._session()
        return await redis_admin.queue_depths(client, self._url, queues, self._keys)

    async def purge(self, queues: Sequence[str]) -> int:
        """Delete the ready and delayed messages of ``queues``; return how many."""
        client, _ = await self._session()
        return await redis_admin.purge(client, self._url, queues, self._keys)

    async def purge_dead_letters(self, queue: str, limit: int | None = None) -> int:
        """Delete the oldest ``limit`` (default all) dead letters of ``queue``."""
        client, _ = await self._session()
        return await redis_admin.purge_dead_letters(client, self._url, queue, limit, self._keys)

    # -- internals -------------------------------------------------------------------------

    def _connected(self, client: aioredis.Redis) -> None:
        if self._wait is not None:
            read_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
            if read_timeout is not None and self._wait[1] >= read_timeout:
                raise ConfigurationError(
                    f"broker_transport_options['wait_timeout'] ({self._wait[1]:g}s) must be "
                    f"shorter than the socket timeout ({read_timeout:g}s), which would cut "
                    f"WAIT off"
                )
        self._scripts = _Scripts.register(client)

    async def _publish_replicated(
        self, client: aioredis.Redis, scripts: _Scripts, runs: Sequence[tuple[list[Any], list[Any]]]
    ) -> None:
        """Run the publish script for each of ``runs`` (keys, args), then ``WAIT``, in one
        pipeline on one connection (WAIT counts the replicas that have that connection's
        writes).

        Raises:
            BrokerConnectionError: fewer than ``wait_replicas`` replicas acknowledged the
                writes within ``wait_timeout``.
        """
        replicas, timeout = self._wait or (0, 0.0)
        primary = self._shared.primary()  # before the write: where it goes
        script = scripts.publish
        for loaded in (False, True):
            async with client.pipeline(transaction=False) as pipe:
                for run_keys, run_args in runs:
                    pipe.evalsha(script.sha, len(run_keys), *run_keys, *run_args)
                pipe.wait(replicas, max(1, int(timeout * 1000)))
                results = await pipe.execute(raise_on_error=False)
            unknown = any(isinstance(r, redis.exceptions.NoScriptError) for r in results)
            if unknown and not loaded:  # a new server: nothing ran; load it and run again
                await client.script_load(script.script)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            break
        acknowledged = int(results[-1])
        if acknowledged >= replicas:
            return
        in_sync = await self._shared.replicas_in_sync(primary)
        if in_sync is None or acknowledged < min(replicas, in_sync):
            raise BrokerConnectionError(
                f"Redis at {redacted_url(self._url)}: {acknowledged} of {replicas} replica(s) "
                f"had the published messages within {timeout:g}s (wait_replicas): not "
                f"acknowledged, since a failover now could lose them (sent again, they may be "
                f"stored twice)"
            )

    async def _on_leases(
        self,
        action: str,
        run: Callable[[_Scripts, Sequence[Delivery]], Awaitable[object]],
        deliveries: Sequence[Delivery],
    ) -> None:
        """``run(scripts, deliveries)`` unless there are none, its errors named ``action``."""
        if deliveries:
            _, scripts = await self._session()
            with redis_errors(self._url, action):
                await run(scripts, deliveries)

    async def _hand_back_buffer(self) -> None:
        """Release every buffered delivery (see :meth:`renew`): ready again at once, for any
        consumer, with its counts kept.

        Raises:
            BrokerConnectionError: the server cannot be reached; the deliveries stay buffered.
        """
        _, scripts = await self._session()
        buffered, self._buffer = self._buffer, []
        try:
            with redis_errors(self._url, "renew"):
                await self._release(scripts, buffered)
        except BaseException:
            # Failed or cancelled: Redis may have run the release all the same (it runs a
            # command it received). Back in the buffer, aged so that handing one out or
            # starting it first checks that the lease is still ours (_take_buffered, start):
            # a released entry is gone, its copy re-added, and must not run twice.
            for delivery in buffered:
                delivery.token = _Lease(delivery.token.stream, delivery.token.entry_id, -math.inf)
            self._buffer.extend(buffered)
            raise

    async def _ack_only(self, scripts: _Scripts, deliveries: Sequence[Delivery]) -> None:
        await self._ack_and_mark(scripts, deliveries, ())

    async def _session(self) -> tuple[aioredis.Redis, _Scripts]:
        """The connected client and its scripts, connecting first if needed."""
        client = await self._connection()
        assert self._scripts is not None  # registered by _connected
        return client, self._scripts

    def _plan(self, queues: Sequence[str]) -> _Plan:
        """The streams of ``queues``: priority 9 to 0, and queues in the given order per level."""
        key = tuple(queues)
        plan = self._plans.get(key)
        if plan is None:
            origin: dict[str, tuple[str, int, int]] = {}
            parts = []
            layout = self._keys
            for group in _by_shard(dict.fromkeys(queues), layout.delayed):
                streams = []
                for priority in reversed(keys.PRIORITIES):
                    for queue in group:
                        stream = layout.stream(queue, priority)
                        origin[stream] = (queue, priority, len(origin))
                        streams.append(stream)
                first = group[0]
                parts.append(
                    _Part(
                        layout.delayed(first),
                        layout.delayed_rejected(first),
                        layout.stream_prefix(first),
                        tuple(streams),
                    )
                )
            plan = self._plans[key] = _Plan(tuple(origin), origin, tuple(parts))
        return plan

    async def _ensure_groups(self, client: aioredis.Redis, streams: Sequence[str]) -> None:
        """Create the consumer group of each stream not known to have one (one pipeline).

        The group starts at id 0, so entries added before it existed (by publishers or the
        delayed-message mover) are still delivered.
        """
        missing = [s for s in streams if s not in self._groups]
        if not missing:
            return
        async with client.pipeline(transaction=False) as pipe:
            for stream in missing:
                pipe.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for stream, result in zip(missing, results, strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
            self._groups.add(stream)

    async def _read_ready(self, scripts: _Scripts, plan: _Plan, limit: int) -> list[Delivery]:
        """Run the fetch script once per part of the plan (once on a single server), in order,
        until ``limit`` is reached: move due delayed messages, reclaim if due, lease."""
        reclaim = time.monotonic() >= self._next_reclaim
        self._script_ran = time.monotonic()
        found: list[Delivery] = []
        incomplete = False
        next_due = math.inf
        for part in plan.parts:
            if len(found) >= limit:
                incomplete = True  # the parts after it were not reclaimed this time
                break
            part_due, cut_short = await self._read_part(
                scripts, plan, part, limit - len(found), reclaim, found
            )
            incomplete = incomplete or cut_short
            next_due = min(next_due, part_due or math.inf)
        if reclaim:
            # A pass cut short by `limit` continues on the next fetch, not a quarter-timeout on.
            pause = 0.0 if incomplete else self._visibility / 4
            self._next_reclaim = time.monotonic() + pause
        self._next_due = next_due if next_due < math.inf else 0.0
        if found and self._buffer:
            self._unbuffer(found)
        # Stable: within a stream, reclaimed (older) entries stay ahead of fresh ones.
        found.sort(key=lambda d: plan.origin[d.token.stream][2])
        return found

    def _unbuffer(self, found: Sequence[Delivery]) -> None:
        """Drop from the buffer the entries the fetch script just leased again.

        A buffered lease is not renewed while it waits; after a visibility timeout the
        script's reclaim pass may take it over for this very consumer (XAUTOCLAIM does not
        skip the claimant's own entries) and hand it out. The buffered copy would then be
        handed out too, its renewal succeeding since the lease is ours: the same message run
        twice at once by one worker (or released on close while it runs).
        """
        leased = {(d.token.stream, d.token.entry_id) for d in found}
        self._buffer = [d for d in self._buffer if (d.token.stream, d.token.entry_id) not in leased]

    async def _read_part(
        self,
        scripts: _Scripts,
        plan: _Plan,
        part: _Part,
        limit: int,
        reclaim: bool,
        found: list[Delivery],
    ) -> tuple[float, bool]:
        """Run the fetch script on one part, adding what it leased to ``found``; return the
        epoch seconds of its earliest delayed message (0: none) and whether its reclaim pass
        was cut short."""
        args: list[bytes | str | int] = [
            keys.GROUP,
            self._consumer,
            limit,
            int(time.time() * 1000),
            _MOVE_LIMIT,
            max(1, int(self._visibility * 1000)) if reclaim else 0,
            part.prefix,
            max(1, int(self._visibility * 1000)),  # a consumer idle this long holding nothing
        ]
        if reclaim:
            args += [self._cursors.get(s, b"0-0") for s in part.streams]
        entries, cursors, incomplete, next_due, set_aside, removed = await scripts.fetch(
            keys=[part.delayed, part.rejected, *part.streams], args=args
        )
        for i in range(0, len(set_aside), 2):
            log.error(
                "malformed delayed message set aside in %s: %s (member starts %r)",
                part.rejected,
                _lossy_text(set_aside[i + 1]),
                bytes(set_aside[i]),
            )
        if removed:
            gone = sorted({_lossy_text(removed[i + 1]) for i in range(0, len(removed), 2)})
            log.info("removed dead consumer(s) holding nothing: %s", ", ".join(gone))
        if reclaim:
            self._cursors.update(zip(part.streams, cursors, strict=True))
        now = time.monotonic()
        for i in range(0, len(entries), 5):
            index, entry_id, body, n, k = entries[i : i + 5]
            stream = part.streams[index - 1]
            found.append(_delivery(plan, stream, entry_id, body, n, k, now))
        return (float(next_due) / 1000 if next_due else 0.0), bool(incomplete)

    def _until_next_check(self) -> float:
        """Seconds the blocking read may wait before the fetch script must run again."""
        now = time.monotonic()
        wait = min(self._script_ran + _MAX_BLOCK, self._next_reclaim) - now
        if self._next_due:
            wait = min(wait, self._next_due - time.time())
        return wait

    async def _read_blocking(
        self, client: aioredis.Redis, plan: _Plan, limit: int, wait: float
    ) -> list[Delivery]:
        """Block in XREADGROUP over all the plan's streams for up to ``wait`` seconds.

        Woken by a new entry, Redis serves only that stream; but entries that arrived just
        before the call come from every stream with data, up to ``limit`` each, so the surplus
        (already leased to us) goes to the buffer for the next fetch.

        A plan of several parts (queues on a cluster: one XREADGROUP cannot span slots) starts
        a blocking read per part not already reading, and returns once any of them found
        something or ``wait`` ran out; a read still blocking is left in flight, and what it
        leases later is buffered for the next fetch (:meth:`_harvest_reads`).
        """
        if len(plan.parts) == 1:
            found = await self._xreadgroup(client, plan, plan.streams, limit, wait)
            if 0 < len(found) < limit:  # every stream gave all it had (COUNT is per stream)
                self._drained = plan.streams
            found.sort(key=lambda d: plan.origin[d.token.stream][2])
            self._buffer.extend(found[limit:])
            return found[:limit]
        tasks = []
        for part in plan.parts:
            task = self._reads.get(part.streams)
            if task is None:
                task = self._reads[part.streams] = asyncio.create_task(
                    self._xreadgroup(client, plan, part.streams, limit, wait)
                )
            tasks.append(task)
        await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        self._harvest_reads()
        mine = [d for d in self._buffer if d.token.stream in plan.origin]
        mine.sort(key=lambda d: plan.origin[d.token.stream][2])
        taken = {id(d) for d in mine[:limit]}
        self._buffer = [d for d in self._buffer if id(d) not in taken]
        return mine[:limit]

    async def _xreadgroup(
        self,
        client: aioredis.Redis,
        plan: _Plan,
        streams: Sequence[str],
        limit: int,
        wait: float,
    ) -> list[Delivery]:
        """One blocking XREADGROUP over ``streams`` (of one slot on a cluster), up to
        ``limit`` entries per stream, for up to ``wait`` seconds.

        On one server (or Sentinel's primary) a cancelled read is woken, not dropped (see
        :meth:`_wakeable_read`); a cluster client's is dropped (its read runs in a task of
        its own, which a fetch does not cancel: :meth:`_read_blocking`).
        """
        block = max(1, int(wait * 1000))
        pool = getattr(client, "connection_pool", None)
        if pool is None:  # a cluster client: the node comes from the keys
            response: Any = await client.xreadgroup(
                keys.GROUP, self._consumer, dict.fromkeys(streams, ">"), count=limit, block=block
            )
        else:
            args = ["XREADGROUP", "GROUP", keys.GROUP, self._consumer, "COUNT", limit]
            args += ["BLOCK", block, "STREAMS", *streams, *(">" * len(streams))]
            response = await self._wakeable_read(client, pool, args, plan)
        return self._read_deliveries(plan, response)

    async def _wakeable_read(
        self, client: aioredis.Redis, pool: Any, args: list[Any], plan: _Plan
    ) -> Any:
        """Send the blocking XREADGROUP ``args`` on a connection of ``pool``, after a
        ``CLIENT ID`` in the same write, and return its parsed reply.

        Cancelled while it blocks, the read is not dropped: Redis may have served it already,
        and what it leased would wait out the visibility timeout, leased to a reader gone. The
        connection's id lets ``CLIENT UNBLOCK`` (on another connection) end the wait at once;
        the reply that follows - empty, or the entries served just before - is read, its
        deliveries go to the buffer (which the next fetch or :meth:`close` takes), and the
        cancellation goes on. A dropped connection is tried again once, as redis-py's own
        retry does (:func:`~aqueue.transports.redis.client.dropped_connection_retry`).

        Raises:
            redis.exceptions.RedisError: the read failed.
        """
        conn = await pool.get_connection()

        async def attempt() -> Any:
            await conn.send_packed_command(conn.pack_commands([("CLIENT", "ID"), args]))
            client_id = await conn.read_response()
            try:
                return await conn.read_response(disconnect_on_error=False)
            except asyncio.CancelledError:
                late = await self._woken(client, conn, client_id)
                if late:
                    self._buffer.extend(self._read_deliveries(plan, _parsed(client, late)))
                raise
            except redis.exceptions.ResponseError:
                raise  # an error reply: the connection is sound
            except BaseException:
                await conn.disconnect(nowait=True)
                raise

        async def dropped(_: Exception) -> None:
            await conn.disconnect()

        try:
            return _parsed(client, await conn.retry.call_with_retry(attempt, dropped))
        finally:
            await pool.release(conn)

    async def _woken(self, client: aioredis.Redis, conn: Any, client_id: Any) -> Any:
        """End the blocking read that ``conn`` (of ``CLIENT ID`` ``client_id``) waits in, with
        ``CLIENT UNBLOCK`` on another connection of ``client``, and return its raw reply:
        ``None`` (woken) or the entries it was served first.

        Whatever fails here (a second cancellation too) drops ``conn``, as redis-py would
        have: what the read leased comes back after the visibility timeout. So does a user
        whose ACL lacks ``+client|unblock`` (an optional grant, docs/security.md), said once
        in the log.
        """
        try:
            if not self._unblock_refused:
                try:
                    await client.client_unblock(int(client_id))
                except redis.exceptions.NoPermissionError:
                    self._unblock_refused = True
                    log.info(
                        "%r: the ACL user may not CLIENT UNBLOCK, so a stopping worker's "
                        "blocking read is dropped, not woken: a message it was served in that "
                        "instant waits out the visibility timeout (docs/security.md)",
                        self,
                    )
            if self._unblock_refused:
                await conn.disconnect(nowait=True)
                return None
            return await asyncio.wait_for(
                conn.read_response(disconnect_on_error=False), _MAX_BLOCK + 1.0
            )
        except BaseException:  # a second cancellation too: the first one goes on anyway
            await conn.disconnect(nowait=True)
            return None

    def _read_deliveries(self, plan: _Plan, response: Any) -> list[Delivery]:
        """The deliveries in a parsed XREADGROUP ``response`` (redis-py's list or dict)."""
        if not response:
            return []
        now = time.monotonic()
        found = []
        items = response.items() if isinstance(response, dict) else response
        for raw_stream, entries in items:
            stream = _text(raw_stream)
            for entry_id, fields in entries:
                if fields is None:  # deleted after being added; nothing to deliver
                    continue
                body, n, k = fields.get(b"b", b""), fields.get(b"n"), fields.get(b"k")
                found.append(_delivery(plan, stream, entry_id, body, n, k, now))
        return found

    def _harvest_reads(self) -> None:
        """Buffer what the blocking reads that returned leased; forget them.

        Raises:
            redis.exceptions.RedisError: a read failed (the first failure; the others'
                deliveries are buffered all the same).
        """
        failure: BaseException | None = None
        for streams, task in list(self._reads.items()):
            if not task.done():
                continue
            del self._reads[streams]
            if task.cancelled():
                continue
            error = task.exception()
            if error is None:
                self._buffer.extend(task.result())
            elif failure is None:
                failure = error
        if failure is not None:
            raise failure

    async def _finish_reads(self) -> None:
        """Wait for the blocking reads in flight (each ends within ~1 s) and buffer what they
        leased, so that closing releases it; a read that does not end in time is cancelled
        (what it leased is delivered again after the visibility timeout)."""
        tasks = list(self._reads.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=_MAX_BLOCK + 1.0)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        try:
            self._harvest_reads()
        except redis.exceptions.RedisError as exc:
            log.warning("closing %r: a blocking read failed: %s", self, exc)

    async def _kept(self, run: Coroutine[Any, Any, list[Delivery]]) -> list[Delivery]:
        """Await ``run`` (fetch script runs) so that cancelling the fetch loses nothing.

        Redis runs a command it received even when the connection is closed before the reply
        is read, and redis-py drops a connection whose reply a cancelled command left unread:
        a worker stopping while its fetch script ran left the batch leased to no one until the
        visibility timeout. Cancelled, the fetch returns at once; the run goes on and its
        deliveries go to the buffer, for the next fetch or :meth:`close` (which waits for it).
        """
        task = asyncio.ensure_future(run)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                self._orphans.add(task)
                task.add_done_callback(self._adopt)
            raise

    def _adopt(self, task: asyncio.Task[list[Delivery]]) -> None:
        """Buffer what an orphaned fetch script run leased (once per run)."""
        if task not in self._orphans:
            return
        self._orphans.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._buffer.extend(task.result())
        else:
            log.warning("%r: a cancelled fetch's script run failed: %s", self, error)

    async def _finish_orphans(self) -> None:
        """Wait for orphaned fetch script runs (a round trip each) and buffer their leases."""
        tasks = list(self._orphans)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=_MAX_BLOCK + 1.0)
        for task in tasks:
            if task in late:
                task.cancel()  # what it leased is delivered again after the visibility timeout
            else:
                self._adopt(task)
        if late:
            await asyncio.wait(late)

    async def _take_buffered(self, scripts: _Scripts, plan: _Plan, limit: int) -> list[Delivery]:
        """Hand out buffered deliveries of the plan's streams, best first.

        Those held for over a quarter of the visibility timeout are renewed first, and dropped
        if another consumer took them over meanwhile.
        """
        mine = [d for d in self._buffer if d.token.stream in plan.origin]
        if not mine:
            return []
        mine.sort(key=lambda d: plan.origin[d.token.stream][2])
        taken = mine[:limit]
        taken_ids = {id(d) for d in taken}
        self._buffer = [d for d in self._buffer if id(d) not in taken_ids]
        cutoff = time.monotonic() - self._visibility / 4
        stale = [d for d in taken if d.token.received < cutoff]
        if not stale:
            return taken
        try:
            kept = await self._renew(scripts, stale)
        except BaseException:
            # Failed or cancelled (a worker stopping): not handed out, so back in the buffer,
            # which the next fetch or close() sees, not left to the visibility timeout.
            self._buffer.extend(taken)
            raise
        lost = {id(d) for d in stale} - {id(d) for d in kept}
        return [d for d in taken if id(d) not in lost]

    async def _renew(self, scripts: _Scripts, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Renew the leases this consumer still holds; return those deliveries."""
        flags = await self._claim_own(scripts, deliveries, [0] * len(deliveries))
        return [d for d, ours in zip(deliveries, flags, strict=True) if ours]

    async def _claim_own(
        self, scripts: _Scripts, deliveries: Sequence[Delivery], marks: Sequence[int]
    ) -> list[bool]:
        """Renew each lease still ours, setting its run mark (0: unchanged, 2: running, 3:
        running isolated; see lua/renew.lua); per delivery, whether it is still ours."""
        leases: list[_Lease] = [d.token for d in deliveries]
        if len(marks) != len(leases):
            raise ValueError(f"{len(marks)} marks for {len(leases)} deliveries")
        shards = self._by_stream_shard(range(len(leases)), lambda i: leases[i].stream)
        calls = []
        for shard in shards:
            args: list[bytes | str | int] = [keys.GROUP, self._consumer]
            for i in shard:
                args += [leases[i].entry_id, marks[i]]
            calls.append(scripts.renew(keys=[leases[i].stream for i in shard], args=args))
        answers = await _gather(calls)
        if len(shards) == 1:  # one server: the flags in the deliveries' order
            flags = list(answers[0])
        else:
            flags = [0] * len(leases)
            for shard, answer in zip(shards, answers, strict=True):
                for i, flag in zip(shard, answer, strict=True):
                    flags[i] = flag
        now = time.monotonic()
        for delivery, lease, flag in zip(deliveries, leases, flags, strict=True):
            if flag:
                delivery.token = _Lease(lease.stream, lease.entry_id, now)
        return [bool(flag) for flag in flags]

    def _by_stream_shard(
        self, items: Sequence[_T], stream: Callable[[_T], str]
    ) -> Sequence[Sequence[_T]]:
        """``items`` grouped by the cluster slot of their stream (``stream(item)``), one group
        per script run (:func:`_by_shard`); on one server, all in one group, with no per-item
        lookup."""
        if not self._keys.cluster:
            return [items] if items else []
        shard = self._keys.shard
        return _by_shard(items, lambda item: shard(stream(item)))

    async def _release(self, scripts: _Scripts, deliveries: Sequence[Delivery]) -> None:
        calls = []
        for shard in self._by_stream_shard(deliveries, lambda d: d.token.stream):
            args: list[bytes | str] = [keys.GROUP, self._consumer]
            args += [d.token.entry_id for d in shard]
            calls.append(scripts.release(keys=[d.token.stream for d in shard], args=args))
        await _gather(calls)


def _parsed(client: aioredis.Redis, raw: Any) -> Any:
    """A raw XREADGROUP reply as ``client.xreadgroup`` returns it (its response callback)."""
    callback = client.response_callbacks.get("XREADGROUP")
    return callback(raw) if callback is not None else raw


def _queue_of(message: Outgoing) -> str:
    return message.queue


async def _gather(calls: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await ``calls`` (script runs on a cluster's nodes) at once; their answers in order.
    Every call is awaited, so none is left running when one fails; the first failure is then
    raised."""
    pending = list(calls)
    if len(pending) == 1:  # a single server: no task to make
        return [await pending[0]]
    answers = await asyncio.gather(*pending, return_exceptions=True)
    found: list[_T] = []
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
        found.append(answer)
    return found


def _replication(options: Mapping[str, Any]) -> tuple[int, float] | None:
    """``(wait_replicas, wait_timeout)`` from the transport options, or ``None`` when a
    publish waits for no replica.

    Raises:
        ConfigurationError: ``wait_replicas`` is not a whole number >= 0, or ``wait_timeout``
            not a number of seconds > 0.
    """
    replicas = options.get("wait_replicas", 0)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ConfigurationError(
            f"broker_transport_options['wait_replicas'] must be a whole number >= 0, "
            f"not {replicas!r}"
        )
    timeout = options.get("wait_timeout", _WAIT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigurationError(
            f"broker_transport_options['wait_timeout'] must be a number of seconds > 0, "
            f"not {timeout!r}"
        )
    return (replicas, float(timeout)) if replicas else None


def _runs(
    streams: list[str], bodies: list[Any], delayed: list[Any]
) -> list[tuple[list[Any], list[Any]]]:
    """The publish script's runs (keys, args) for ready ``bodies`` (to ``streams[1:]``) and
    ``delayed`` (eta, member) pairs: one run when all fit in :data:`_PUBLISH_CHUNK`, else
    chunks of at most that many, to bound how long one script run holds the server."""
    if len(bodies) + len(delayed) // 2 <= _PUBLISH_CHUNK:
        return [(streams, bodies + delayed)]
    runs: list[tuple[list[Any], list[Any]]] = []
    for at in range(0, len(bodies), _PUBLISH_CHUNK):
        chunk = streams[1 + at : 1 + at + _PUBLISH_CHUNK]
        runs.append(([streams[0], *chunk], bodies[at : at + _PUBLISH_CHUNK]))
    for at in range(0, len(delayed), 2 * _PUBLISH_CHUNK):
        runs.append((streams[:1], delayed[at : at + 2 * _PUBLISH_CHUNK]))
    return runs


def _delivery(
    plan: _Plan,
    stream: str,
    entry_id: bytes,
    body: bytes,
    n: bytes | None,
    k: bytes | None,
    now: float,
) -> Delivery:
    """A delivery of one stream entry, its counts checked (see :func:`_counts`)."""
    if not n and not k:  # a first delivery: nothing to check
        return Delivery(
            plan.origin[stream][0], bytes(body), 1, _Lease(stream, bytes(entry_id), now)
        )
    count, strikes, defect = _counts(n, k)
    return Delivery(
        queue=plan.origin[stream][0],
        body=bytes(body),
        delivery_count=count,
        token=_Lease(stream, bytes(entry_id), now),
        strikes=strikes,
        defect=defect,
    )
