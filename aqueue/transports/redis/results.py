"""The Redis result backend: a string per task id, and pub/sub to tell waiters it changed.

Relies on these Redis semantics (key names in :mod:`aqueue.transports.redis.keys`):

- ``SET ... PX`` replaces a record and its expiry in one command; ``PUBLISH`` on the task's
  channel right after reaches every connection subscribed at that moment, and nobody else.
- A connection's ``SUBSCRIBE`` confirmation arrives after the server registered the
  subscription, so a record stored after :meth:`RedisBackend.watch` is entered is published to
  us; one stored before is read with ``MGET`` (subscribe first, then read: no gap).
- ``MULTI`` makes ``INCRBY`` + ``PEXPIRE`` of a counter atomic, and ``SADD`` + ``PEXPIRE`` +
  ``SCARD`` of a member set: a retried ``MULTI`` (redis-py retries on connection errors) adds
  nothing twice, so the size it returns stays right.

All watches share one pub/sub connection and one reader task per backend instance, and so does
this client's reply channel (:mod:`aqueue.results.mailbox`): records of tasks it sent arrive there,
batched, with no per-task SUBSCRIBE.

On Redis Cluster (:mod:`aqueue.transports.redis.cluster`) a task id's record, watched mark and
channel share its hash tag; records are stored one script run per task id
(``lua/store_sharded.lua``), all of a batch in one pipeline that redis-py sends to each primary
at once, and channels are sharded (``SPUBLISH``/``SSUBSCRIBE``: one connection per primary
subscribed on).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from aqueue.exceptions import BrokerConnectionError, BrokerError
from aqueue.results.mailbox import Inbox, Mailbox, pack
from aqueue.transports.base import Records, ReplyTo, waiters_key
from aqueue.transports.fanout import SubscriberQueue
from aqueue.transports.redis import keys, lua
from aqueue.transports.redis.client import SharedClient, as_bytes, redacted_url, redis_errors
from aqueue.transports.redis.keys import CLUSTER
from aqueue.transports.redis.role import RedisRole

__all__ = ["RedisBackend"]

log = logging.getLogger(__name__)

# How long entering a watch waits for the SUBSCRIBE confirmation (seconds); the connection may
# be re-established meanwhile, which redis-py follows with a new SUBSCRIBE.
_SUBSCRIBE_TIMEOUT = 10.0


_RESULT_PREFIX = keys.result("")
_CHANNEL_PREFIX = keys.result_channel("")
_WATCHED = keys.watched()
# The sorted set of the ids with waiters (Waiters.add_waiter), which lua/store.lua checks.
_WAITED = keys.waited()
# Seconds a watcher's entry in the watched set lasts; live watches renew it every third.
_WATCH_TTL = 3600.0
# The reply channel every client listens on beside its own (no client token is this word): a
# record whose sender is not known, such as a revocation made by another client, goes there.
_SHARED_REPLY = keys.reply_channel("everyone")


def _milliseconds(seconds: float) -> int:
    # Redis rejects an expiry of 0 ms; a record that expires at once still exists for 1 ms.
    return max(1, int(seconds * 1000))


class RedisBackend(RedisRole):
    """A :class:`~aqueue.transports.base.ResultBackend` on Redis (``redis://``, ``rediss://``).

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...`` for TLS.
    """

    def __init__(self, url: str, client: SharedClient | None = None) -> None:
        super().__init__(url, client)
        self._store_script: AsyncScript | None = None  # registered with the client
        self._scripts: dict[str, AsyncScript] = {}  # lock, unlock: registered with the client
        self._subscribing = asyncio.Lock()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchers: dict[bytes, list[SubscriberQueue]] = {}  # channel -> queues
        # One future per SUBSCRIBE sent, resolved in order by the server's confirmations.
        self._confirmations: dict[bytes, collections.deque[asyncio.Future[None]]] = {}
        self._messages_seen: dict[bytes, int] = {}  # channel -> messages dispatched so far
        self._watched_ids: dict[bytes, str] = {}  # a watched task's channel -> its id
        self._refreshes: set[asyncio.Task[None]] = set()
        self._leaving: set[asyncio.Future[None]] = set()  # watches unsubscribing (see watch)
        self._remarker: asyncio.Task[None] | None = None
        # This client's reply channel: subscribed on first use, by one task all callers await.
        self._reply = keys.reply_channel(secrets.token_hex(8)).encode()
        self._reply_name = self._reply.decode()
        self._reply_subscribed: asyncio.Task[None] | None = None
        self._shared_reply = _SHARED_REPLY.encode()
        self._inbox = Inbox()

    async def close(self) -> None:
        """Stop the pub/sub reader and close all connections. Idempotent.

        Watches still entered, and the mailboxes of this client's reply channel, get no more
        records: their readers get :class:`~aqueue.exceptions.BrokerConnectionError` once they
        have what arrived before. Entering a watch later reconnects.
        """
        tasks = [
            t
            for t in (self._reader, self._remarker, *self._refreshes, *self._leaving)
            if t is not None
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            # wait() rather than awaiting each: it does not re-raise their CancelledError, so a
            # cancellation of close() itself is not swallowed.
            await asyncio.wait(tasks)
        self._reader = self._remarker = None
        self._refreshes.clear()
        self._leaving.clear()
        if self._reply_subscribed is not None:
            self._reply_subscribed.cancel()
            await asyncio.wait([self._reply_subscribed])
            self._reply_subscribed = None
        reason = f"{self!r} was closed: waiting for results ended"
        self._inbox.clear(reason)
        for queues in self._watchers.values():
            for queue in queues:
                queue.end(reason)
        for waiting in self._confirmations.values():
            for future in waiting:
                future.cancel()
        self._confirmations.clear()
        self._watchers.clear()
        self._messages_seen.clear()
        self._watched_ids.clear()
        pubsub = self._pubsub
        self._pubsub = None
        if pubsub is not None:
            # Untyped before redis-py 8.2.
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await self._release_client()

    async def store(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> None:
        """SET each record (PX ``expires`` seconds) and PUBLISH it, in one script run.

        A record of an id in ``reply_to`` is published to that reply channel, one PUBLISH per
        channel (:func:`~aqueue.results.mailbox.pack`); every record is published to its own
        channel only if someone watches it there (:meth:`watch`).
        Reply channels not named ``aqueue:reply:*`` are ignored. A record of a task this client
        awaits reaches its mailbox here too.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        await self._store(items, expires, reply_to, waited=False)

    async def store_waited(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None = None
    ) -> list[str]:
        """:meth:`store`, and which of the ids have waiters, in the same script run (one round
        trip): the script checks each id's waiter set after storing
        (:meth:`aqueue.transports.base.Waiters.store_waited`).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        return await self._store(items, expires, reply_to, waited=True)

    async def _store(
        self, items: Records, expires: float | None, reply_to: ReplyTo | None, waited: bool
    ) -> list[str]:
        if not items:
            return []
        client = await self._connection()
        if self._keys.cluster:
            await self._store_sharded(client, items, expires, reply_to)
            if self._inbox:
                for task_id, record in items:
                    self._inbox.put(task_id, record)
            return await self._waited(client, items) if waited else []
        names: list[str] = [_WATCHED]
        records: list[bytes] = []
        replies: dict[str, list[tuple[str, bytes]]] = {}
        for task_id, record in items:
            names.append(_RESULT_PREFIX + task_id)
            records.append(record)
            channel = reply_to.get(task_id) if reply_to else None
            if channel and channel.startswith(keys.REPLY_PREFIX):
                replies.setdefault(channel, []).append((task_id, record))
        args: list[Any] = [
            0 if expires is None else _milliseconds(expires),
            len(_RESULT_PREFIX),
            _CHANNEL_PREFIX,
            int(time.time() * 1000),
            _WAITED if waited else "",
            *records,
        ]
        for channel, batch in replies.items():
            args.append(channel)
            args.append(pack(batch))
        with redis_errors(self._url, "store"):
            script = self._store_script
            if script is None or script.registered_client is not client:
                script = self._store_script = lua.register(client, "store")
            found = await script(keys=names, args=args)
        if self._inbox:
            for task_id, record in items:
                self._inbox.put(task_id, record)
        return [as_bytes(task_id).decode() for task_id in found]

    async def add_waiter(self, task_id: str, waiter: str, expires: float | None) -> None:
        """Add ``waiter`` to ``task_id``'s waiter set and mark ``task_id`` in the waited set,
        in one MULTI (:meth:`aqueue.transports.base.Waiters.add_waiter`); the store script
        reads the waited set once per batch. On a cluster, the waiter set alone (its store
        checks each record's waiter set).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if self._keys.cluster:
            await self.add_member(waiters_key(task_id), waiter, expires)
            return
        client = await self._connection()
        name = keys.members(waiters_key(task_id))
        now_ms = int(time.time() * 1000)
        # Without an expiry: ten years (a score the store script compares as a number).
        until = now_ms + (_milliseconds(expires) if expires is not None else 315_360_000_000)
        with redis_errors(self._url, "add_waiter"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.sadd(name, waiter)
                if expires is not None:
                    pipe.pexpire(name, _milliseconds(expires))
                pipe.zadd(_WAITED, {task_id: until}, gt=True)
                pipe.zremrangebyscore(_WAITED, "-inf", now_ms)
                await pipe.execute()

    async def members(self, key: str) -> list[str]:
        """SMEMBERS of the set ``key`` (:meth:`add_member`'s).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "members"):
            found = await client.smembers(keys.members(key))
        return sorted(as_bytes(member).decode() for member in found)

    async def lock(self, key: str, owner: str, ttl: float) -> str:
        """Take the lock in one script run (GET, then ``SET ... PX`` when free or ours); see
        :meth:`aqueue.transports.base.Locks.lock`.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "lock"):
            holder = await self._script(client, "lock")(
                keys=[keys.lock(key)], args=[owner, _milliseconds(ttl)]
            )
        return as_bytes(holder).decode()

    async def unlock(self, key: str, owner: str) -> bool:
        """Compare and delete in one script run; see :meth:`aqueue.transports.base.Locks.unlock`.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        with redis_errors(self._url, "unlock"):
            freed = await self._script(client, "unlock")(keys=[keys.lock(key)], args=[owner])
        return bool(freed)

    def _script(self, client: Any, name: str) -> AsyncScript:
        """Script ``name`` registered with ``client`` (kept until the client changes)."""
        script = self._scripts.get(name)
        if script is None or script.registered_client is not client:
            script = self._scripts[name] = lua.register(client, name)
        return script

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """MGET the records of ``task_ids``; ``None`` where nothing is stored.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if not task_ids:
            return []
        client = await self._connection()
        names = [self._keys.result(t) for t in task_ids]
        with redis_errors(self._url, "get_many"):
            if self._keys.cluster:  # one MGET per slot, sent to their nodes at once
                values = await cast(RedisCluster, client).mget_nonatomic(names)
            else:
                values = await client.mget(names)
        return [None if v is None else as_bytes(v) for v in values]

    async def delete(self, task_ids: Sequence[str]) -> None:
        """DEL the records of ``task_ids``.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        if not task_ids:
            return
        client = await self._connection()
        with redis_errors(self._url, "delete"):
            await client.delete(*(self._keys.result(t) for t in task_ids))

    async def add_member(self, key: str, member: str, expires: float | None) -> int:
        """SADD ``member`` to the set, (re)set its expiry and SCARD it, atomically in one MULTI.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        client = await self._connection()
        name = keys.members(key)
        with redis_errors(self._url, "add_member"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.sadd(name, member)
                if expires is not None:
                    pipe.pexpire(name, _milliseconds(expires))
                pipe.scard(name)
                results = await pipe.execute()
        return int(results[-1])

    async def reply_channel(self) -> str:
        """This client's reply channel, subscribed (and confirmed) before this returns.

        Raises:
            BrokerConnectionError: the server cannot be reached, or did not confirm the
                subscription within 10 seconds.
        """
        task = self._reply_subscribed
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            return self._reply_name  # subscribed: what every send after the first one finds
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._reply_subscribed = asyncio.ensure_future(self._subscribe_replies())
        await asyncio.shield(task)
        return self._reply_name

    @property
    def shared_reply_channel(self) -> str:
        """The reply channel every client of this backend listens on beside its own
        (``aqueue:reply:everyone``): records stored for it reach the mailbox of their task id
        in whichever client sent the task (a revocation made elsewhere, see
        :meth:`aqueue.control.client.Control.revoke`)."""
        return _SHARED_REPLY

    async def _subscribe_replies(self) -> None:
        """Subscribe this client's reply channel and the shared one; both or neither."""
        queue = SubscriberQueue()  # unused: _dispatch routes replies
        await self._subscribe(self._reply, queue)
        try:
            await self._subscribe(self._shared_reply, queue)
        except BaseException:
            await self._unsubscribe(self._reply, queue)
            raise

    def expect(self, task_id: str) -> Mailbox:
        """The mailbox that records of ``task_id`` arriving on the reply channel go to.

        Call it before the message naming :meth:`reply_channel` is published; hold the mailbox
        while the result may be awaited (it is dropped with its last reference).
        """
        return self._inbox.expect(task_id, self)

    @asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Subscribe to ``task_id``'s channel; yield the queue its new records are put on,
        until :meth:`close` ends it (see :class:`.fanout.SubscriberQueue`).

        Entering returns once the server confirmed the subscription and the id is in the
        watched set (so a worker publishes its records here even when they also go to a sender's
        reply channel; entries last an hour, renewed while watched). Several watchers of one id
        share the subscription and each get every record; the last one leaving unsubscribes.

        Raises:
            BrokerConnectionError: the server cannot be reached, or did not confirm the
                subscription within 10 seconds.
        """
        channel = self._keys.result_channel(task_id).encode()
        queue = SubscriberQueue()
        try:
            await self._subscribe(channel, queue, task_id)
            # After subscribing, before the caller reads the record (see lua/store.lua).
            await self._mark_watched([task_id])
            if self._remarker is None or self._remarker.done():
                self._remarker = asyncio.create_task(self._remark_loop())
            yield queue
        finally:
            # In a task of its own: the caller cancelled again while it waits for the lock
            # (its deadline, then its own caller) must not leave the watch behind - its channel
            # subscribed and its id renewed in the watched set for the client's whole life.
            leaving = asyncio.ensure_future(self._unsubscribe(channel, queue))
            self._leaving.add(leaving)
            leaving.add_done_callback(self._leaving.discard)
            await asyncio.shield(leaving)

    # -- internals -------------------------------------------------------------------------

    async def _mark_watched(self, task_ids: Sequence[str]) -> None:
        """Put ``task_ids`` in the watched set for another hour; drop entries run out."""
        client = await self._connection()
        now_ms = int(time.time() * 1000)
        until = now_ms + int(_WATCH_TTL * 1000)
        with redis_errors(self._url, "watch"):
            async with client.pipeline(transaction=False) as pipe:
                if self._keys.cluster:  # a mark per task id, in its slot
                    for task_id in task_ids:
                        pipe.set(CLUSTER.watched(task_id), b"1", px=_milliseconds(_WATCH_TTL))
                else:
                    pipe.zadd(_WATCHED, dict.fromkeys(task_ids, until), gt=True)
                    pipe.zremrangebyscore(_WATCHED, "-inf", now_ms)
                await pipe.execute()

    async def _remark_loop(self) -> None:
        """Renew the watched-set entries of this backend's live watches, until cancelled."""
        while self._client is not None:
            await asyncio.sleep(_WATCH_TTL / 3)
            ids = [self._watched_ids[c] for c in self._watchers if c in self._watched_ids]
            if ids:
                try:
                    await self._mark_watched(ids)
                except BrokerError as exc:
                    log.warning("%r: cannot renew watches: %s", self, exc)

    async def _subscribe(
        self, channel: bytes, queue: SubscriberQueue, task_id: str | None = None
    ) -> None:
        """Add ``queue`` as a watcher of ``channel`` (of ``task_id``'s record, if given); return
        once the subscription is live.

        A channel with watchers has a SUBSCRIBE that was sent: confirmed when no confirmation
        of it is pending (a SUBSCRIBE that failed to go out took its watcher back, under the
        same lock), so a joiner is live at once, or once the pending confirmation arrives.
        """
        client = await self._connection()
        # Serialised with _unsubscribe so SUBSCRIBE and UNSUBSCRIBE of one channel reach the
        # server in the order the watcher counts changed.
        async with self._subscribing:
            watchers = self._watchers.setdefault(channel, [])
            watchers.append(queue)
            if task_id is not None:
                # Under the lock: a last watcher leaving meanwhile would drop it (_forget).
                self._watched_ids[channel] = task_id
            if len(watchers) == 1:
                confirmed = asyncio.get_running_loop().create_future()
                waiting = self._confirmations.setdefault(channel, collections.deque())
                waiting.append(confirmed)
                if self._pubsub is None:
                    self._pubsub = client.pubsub()
                try:
                    with redis_errors(self._url, "subscribe"):
                        await getattr(self._pubsub, self._channels.subscribe)(channel)
                except BaseException:  # failed, or cancelled (maybe while connecting)
                    waiting.remove(confirmed)
                    if not waiting:
                        del self._confirmations[channel]
                    # Before the lock is released: a watcher waiting for it must not join a
                    # subscription that was never made, but send its own SUBSCRIBE. No
                    # UNSUBSCRIBE: redis-py did not record the channel, so does not subscribe
                    # it again after a reconnect; if the command did reach the server, its
                    # messages only go to the reader, which drops them.
                    self._forget(channel, queue)
                    raise
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(self._pubsub))
            else:
                # Another watcher's SUBSCRIBE may still be on its way: live once it is confirmed.
                pending = self._confirmations.get(channel)
                if not pending:
                    return
                confirmed = pending[-1]
        try:
            # Shielded: one watcher giving up must not cancel the confirmation others await.
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation
            # (a get()'s deadline) that comes as the confirmation arrives, and the waiter then
            # waits for ever.
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
                await asyncio.shield(confirmed)
        except TimeoutError:
            raise BrokerConnectionError(
                f"Redis at {redacted_url(self._url)} did not confirm SUBSCRIBE "
                f"{channel.decode()} within {_SUBSCRIBE_TIMEOUT:g}s"
            ) from None

    async def _unsubscribe(self, channel: bytes, queue: SubscriberQueue) -> None:
        """Remove ``queue``; the last watcher of ``channel`` leaving sends UNSUBSCRIBE."""
        async with self._subscribing:
            # Nothing to send while others watch, or when the queue is gone already: close()
            # ended every watch, or its SUBSCRIBE failed (_subscribe took it back).
            if not self._forget(channel, queue) or self._pubsub is None:
                return
            try:
                with redis_errors(self._url, "unsubscribe"):
                    await getattr(self._pubsub, self._channels.unsubscribe)(channel)
            except BrokerError as exc:
                # Not raised: leaving a watch should not fail. A subscription left behind only
                # brings messages nobody waits for, which the reader drops.
                log.warning("%r: %s", self, exc)

    def _forget(self, channel: bytes, queue: SubscriberQueue) -> bool:
        """Remove ``queue`` from ``channel``'s watchers (``self._subscribing`` held); True if
        it was the last one (its channel's state is dropped too)."""
        watchers = self._watchers.get(channel)
        if watchers is None or queue not in watchers:
            return False
        watchers.remove(queue)
        if watchers:
            return False
        del self._watchers[channel]
        self._messages_seen.pop(channel, None)
        self._watched_ids.pop(channel, None)
        return True

    async def _read(self, pubsub: PubSub) -> None:
        """Dispatch every pub/sub message to its watchers, until cancelled.

        redis-py reconnects and re-subscribes by itself when the connection drops; while the
        server stays unreachable this keeps retrying with a growing pause.
        """
        async for message in self._shared.messages(pubsub, self):
            self._dispatch(message["type"], message["channel"], message["data"])

    def _dispatch(self, kind: str, channel: bytes, data: Any) -> None:
        # Sharded pub/sub (a cluster) names its types smessage and ssubscribe.
        if kind == self._channels.message:
            kind = "message"
        elif kind == self._channels.subscribed:
            kind = "subscribe"
        if kind == "message" and (channel == self._reply or channel == self._shared_reply):
            try:
                self._inbox.deliver(data)
            except ValueError as exc:
                log.warning("%r: malformed message on the reply channel dropped: %s", self, exc)
            return
        if kind == "message":
            self._messages_seen[channel] = self._messages_seen.get(channel, 0) + 1
            for queue in self._watchers.get(channel, ()):
                queue.put_nowait(data)
        elif kind == "subscribe":
            waiting = self._confirmations.get(channel)
            if waiting:
                future = waiting.popleft()
                if not waiting:
                    del self._confirmations[channel]
                if not future.done():
                    future.set_result(None)
            elif channel in self._watchers:
                # redis-py re-subscribed after a reconnect: a record stored while we were
                # disconnected was published to nobody, so read it now.
                task = asyncio.create_task(self._refresh(channel))
                self._refreshes.add(task)
                task.add_done_callback(self._refreshes.discard)

    async def _refresh(self, channel: bytes) -> None:
        """Put ``channel``'s current record on its watchers' queues (after a reconnect).

        Skipped if a message arrived meanwhile: it is at least as new as what GET returned, and
        queues must not go back in time. For the reply channel: every expected task's record.
        """
        if channel == self._reply:
            await self._refresh_inbox()
            return
        if channel == self._shared_reply:
            return  # what it brought is read back with the reply channel's records
        seen = self._messages_seen.get(channel, 0)
        task_id = self._watched_ids.get(channel)
        if task_id is None:  # no longer watched
            return
        try:
            record = await self._connection_value(self._keys.result(task_id))
        except BrokerError as exc:
            log.warning("%r: cannot re-read %s after reconnect: %s", self, task_id, exc)
            return
        if record is not None and self._messages_seen.get(channel, 0) == seen:
            for queue in self._watchers.get(channel, ()):
                queue.put_nowait(record)

    async def _refresh_inbox(self) -> None:
        """Read back the records of every expected task (replies sent while disconnected).

        A record read here may be older than one that arrived meanwhile; readers skip what they
        have seen (:class:`~aqueue.results.result.AsyncResult` compares state and date).
        """
        expected = self._inbox.expected()
        for start in range(0, len(expected), 1000):
            chunk = expected[start : start + 1000]
            try:
                records = await self.get_many(chunk)
            except BrokerError as exc:
                log.warning("%r: cannot re-read results after reconnect: %s", self, exc)
                return
            for task_id, record in zip(chunk, records, strict=True):
                if record is not None:
                    self._inbox.put(task_id, record)

    async def _store_sharded(
        self,
        client: aioredis.Redis,
        items: Records,
        expires: float | None,
        reply_to: ReplyTo | None,
    ) -> None:
        """:meth:`store` on a cluster: one store script run per record (its keys and channel in
        its task id's slot), in one pipeline (redis-py sends each node its part at once); then
        one SPUBLISH per reply channel, in a second round trip, so that no reply arrives before
        its record is stored on its own node. Records the servers had no script for yet are
        stored again once it is loaded."""
        script = self._store_script
        if script is None or script.registered_client is not client:
            script = self._store_script = lua.register(client, "store_sharded")
        px = 0 if expires is None else _milliseconds(expires)
        replies: dict[str, list[tuple[str, bytes]]] = {}
        runs: list[tuple[Any, ...]] = []
        for task_id, record in items:
            channel = reply_to.get(task_id) if reply_to else None
            if channel and channel.startswith(keys.REPLY_PREFIX):
                replies.setdefault(channel, []).append((task_id, record))
            runs.append(
                (
                    CLUSTER.result(task_id),
                    CLUSTER.watched(task_id),
                    px,
                    record,
                    CLUSTER.result_channel(task_id),
                )
            )
        with redis_errors(self._url, "store"):
            async with client.pipeline(transaction=False) as pipe:
                for run in runs:
                    pipe.evalsha(script.sha, 2, *run)
                results = await pipe.execute(raise_on_error=False)
            again = [r for r, res in zip(runs, results, strict=True) if _no_script(res)]
            failed = [r for r in results if isinstance(r, Exception) and not _no_script(r)]
            if again:  # a node new to the script (restarted, failed over): load it, run again
                await client.script_load(script.script)
                async with client.pipeline(transaction=False) as pipe:
                    for run in again:
                        pipe.evalsha(script.sha, 2, *run)
                    results = await pipe.execute(raise_on_error=False)
                failed += [r for r in results if isinstance(r, Exception)]
            if failed:
                raise failed[0]
            if replies:
                # Only once every record is stored (they are on other nodes than the reply
                # channels): a sender that reads a record after its reply must find it.
                async with client.pipeline(transaction=False) as pipe:
                    for channel, batch in replies.items():
                        pipe.spublish(channel, pack(batch))
                    await pipe.execute()

    async def _waited(self, client: aioredis.Redis, items: Records) -> list[str]:
        """On a cluster, after the records are stored: the ids whose waiter set exists (one
        EXISTS each, in one pipeline). The waiter set is in another slot than the record, so
        not in the store script; a waiter adds itself to the set before reading the record,
        and this reads the set after the record is stored, so one of the two sees the other."""
        ids = [task_id for task_id, _ in items]
        with redis_errors(self._url, "store"):
            async with client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.exists(keys.members(waiters_key(task_id)))
                found = await pipe.execute()
        return [task_id for task_id, there in zip(ids, found, strict=True) if there]

    async def _connection_value(self, key: str) -> bytes | None:
        client = await self._connection()
        with redis_errors(self._url, "get"):
            value = await client.get(key)
        return None if value is None else as_bytes(value)


def _no_script(result: object) -> bool:
    """True for a pipeline's answer saying the server did not know the script (NOSCRIPT)."""
    return isinstance(result, redis.exceptions.NoScriptError)
