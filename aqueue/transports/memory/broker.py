"""The in-process broker: the reference implementation of the Broker Protocol.

Everything lives in this process's memory, so a producer and a worker must share one app object
(the pytest plugin's fixtures do). Nothing survives the process. It keeps the full contract -
leases with a visibility timeout, priorities, delayed messages, dead-lettering, and blame for
what was running when a lease ran out (:class:`~aqueue.transports.base.RunTracking`) - so code
tested on it behaves the same on Redis or SQLite.

The state is guarded by a thread lock and waiters are woken on their own event loop, so one
instance may be used from several loops (e.g. a test's loop and a thread's).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aqueue.transports import visibility_timeout as _visibility_timeout
from aqueue.transports.base import (
    DeadLetter,
    Delivery,
    Outgoing,
    QueueDepth,
    SendLetters,
    dead_letter_queue,
)


@dataclass(slots=True)
class _Stored:
    body: bytes
    priority: int
    delivery_count: int = 1  # 1, plus one per lease that ran out while it was running
    strikes: int = 0  # leases that ran out while it ran as an isolated suspect
    running: int = 0  # 0: the current lease did not start it; 2: running; 3: running isolated
    lease: str | None = None
    # time.monotonic() when the lease runs out: a lease never leaves the process, so a step of
    # the wall clock (NTP) must neither expire it early nor extend it.
    lease_until: float = 0.0
    seq: int = 0

    def blame(self) -> None:
        """Its lease ran out: count it against the message if it was running."""
        if self.running:
            self.delivery_count += 1
            self.strikes += self.running == 3
            self.running = 0


@dataclass(slots=True)
class _Queue:
    # Ready messages: a heap of (-priority, seq) -> _Stored, so 9 before 0 and FIFO within one.
    ready: list[tuple[int, int, _Stored]] = field(default_factory=list)
    leased: dict[int, _Stored] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)


class MemoryBroker:
    """In-process broker for ``memory://`` URLs; state is per instance.

    Args:
        url: ``memory://`` (anything after the scheme is ignored).
        options: broker transport options; ``visibility_timeout`` (seconds, default 30).
    """

    def __init__(self, url: str = "memory://", options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.visibility_timeout = _visibility_timeout(options or {})
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        self._delayed: list[tuple[float, int, str, _Stored]] = []
        self._seq = itertools.count()
        self._waiters: set[asyncio.Future[None]] = set()
        self._taken: set[int] = set()  # id() of the dead letters a replay holds

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Wake fetchers; the state is kept (a later ``connect`` sees the same messages)."""
        self._wake_all()

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    def _push_ready(self, queue: str, stored: _Stored) -> None:
        stored.seq = next(self._seq)
        heapq.heappush(self._queue(queue).ready, (-stored.priority, stored.seq, stored))

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store messages; delayed ones go to a heap ordered by eta."""
        now = time.time()
        with self._lock:
            for m in messages:
                stored = _Stored(m.body, m.priority)
                if m.eta is not None and m.eta > now:
                    heapq.heappush(self._delayed, (m.eta, next(self._seq), m.queue, stored))
                else:
                    self._push_ready(m.queue, stored)
        self._wake_all()

    def _move_due(self, now: float, clock: float) -> None:
        """Make ready the delayed messages due at ``now`` (epoch seconds: an eta comes from
        the message) and the leased ones whose lease ran out by ``clock`` (``time.monotonic()``)."""
        while self._delayed and self._delayed[0][0] <= now:
            _, _, queue, stored = heapq.heappop(self._delayed)
            self._push_ready(queue, stored)
        for name, q in self._queues.items():
            expired = [k for k, s in q.leased.items() if s.lease_until <= clock]
            for key in expired:
                stored = q.leased.pop(key)
                stored.blame()
                self._push_ready(name, stored)

    def _until_next_due(self, now: float, clock: float) -> float | None:
        """Seconds until the next delayed message is due or lease runs out (``None``: neither
        pending), from ``now`` (epoch seconds) and ``clock`` (``time.monotonic()``)."""
        waits = [self._delayed[0][0] - now] if self._delayed else []
        leases = [s.lease_until for q in self._queues.values() for s in q.leased.values()]
        if leases:
            waits.append(min(leases) - clock)
        return min(waits) if waits else None

    def _take(self, queues: Sequence[str], limit: int, clock: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, best first, until ``clock`` (``time.monotonic()``)
        plus the visibility timeout."""
        out: list[Delivery] = []
        while len(out) < limit:
            best: tuple[int, int, str] | None = None
            for position, name in enumerate(queues):
                q = self._queues.get(name)
                if q and q.ready:
                    prio, seq, _ = q.ready[0]
                    key = (prio, position, name)
                    if best is None or key[:2] < best[:2]:
                        best = key
            if best is None:
                break
            q = self._queues[best[2]]
            _, seq, stored = heapq.heappop(q.ready)
            stored.lease = uuid.uuid4().hex
            stored.lease_until = clock + self.visibility_timeout
            q.leased[seq] = stored
            token = (seq, stored.lease)
            out.append(Delivery(best[2], stored.body, stored.delivery_count, token, stored.strikes))
        return out

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` messages, waiting up to ``timeout`` seconds for the first."""
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            now, clock = time.time(), time.monotonic()
            waiter: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._move_due(now, clock)
                got = self._take(queues, limit, clock)
                if got:
                    return got
                next_due = self._until_next_due(now, clock)
                self._waiters.add(waiter)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._waiters.discard(waiter)
                return []
            if next_due is not None:
                remaining = min(remaining, max(next_due, 0.001))
            try:
                # Not wait_for: on 3.11 it loses a cancel that comes as the waiter is woken,
                # and the fetch would then lease messages for a caller that gave up.
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiters.discard(waiter)

    def _wake_all(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            _wake(fut)

    def _leased(self, delivery: Delivery) -> _Stored | None:
        seq, lease = delivery.token
        q = self._queues.get(delivery.queue)
        stored = q.leased.get(seq) if q else None
        return stored if stored is not None and stored.lease == lease else None

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Drop the messages; a stale lease (already redelivered elsewhere) is ignored."""
        with self._lock:
            for d in deliveries:
                if self._leased(d) is not None:
                    del self._queues[d.queue].leased[d.token[0]]

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Make leased messages ready again at once, keeping their counts (not a death)."""
        with self._lock:
            for d in deliveries:
                stored = self._leased(d)
                if stored is not None:
                    del self._queues[d.queue].leased[d.token[0]]
                    stored.lease = None
                    stored.running = 0
                    self._push_ready(d.queue, stored)
        self._wake_all()

    async def start(
        self, runs: Sequence[tuple[Delivery, bool]], acks: Sequence[Delivery] = ()
    ) -> list[bool]:
        """Ack ``acks``, then mark leased messages as running (isolated: as the worker's one
        suspect) and renew their leases; False for a lease that is no longer ours."""
        await self.ack(acks)
        until = time.monotonic() + self.visibility_timeout
        kept = []
        with self._lock:
            for delivery, isolated in runs:
                stored = self._leased(delivery)
                if stored is not None:
                    stored.running = 3 if isolated else 2
                    stored.lease_until = until
                kept.append(stored is not None)
        return kept

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Push the lease of each message ``visibility_timeout`` seconds into the future."""
        until = time.monotonic() + self.visibility_timeout
        with self._lock:
            for d in deliveries:
                stored = self._leased(d)
                if stored is not None:
                    stored.lease_until = until

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``<queue>.dlq`` with ``reason``."""
        with self._lock:
            if self._leased(delivery) is None:
                return  # the lease ran out and the message went back: not ours to move
            del self._queues[delivery.queue].leased[delivery.token[0]]
            dlq = self._queue(dead_letter_queue(delivery.queue))
            dlq.dead.append(DeadLetter(delivery.queue, delivery.body, reason, time.time()))

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``queue``."""
        with self._lock:
            q = self._queues.get(dead_letter_queue(queue))
            return list(q.dead[:limit]) if q else []

    async def take_dead_letters(self, queue: str, limit: int, send: SendLetters) -> int:
        """Take the oldest ``limit`` dead letters of ``queue`` that no other take holds, await
        ``send(letters)``, then drop exactly those (see
        :class:`~aqueue.transports.base.DeadLetterTakes`)."""
        with self._lock:
            q = self._queues.get(dead_letter_queue(queue))
            free = [letter for letter in q.dead if id(letter) not in self._taken] if q else []
            letters = free[: max(limit, 0)]
            self._taken.update(id(letter) for letter in letters)
        if not letters:
            return 0
        mine = {id(letter) for letter in letters}
        try:
            await send(list(letters))
            with self._lock:
                dead = self._queues[dead_letter_queue(queue)].dead
                dead[:] = [letter for letter in dead if id(letter) not in mine]
        finally:
            with self._lock:
                self._taken -= mine
        return len(letters)

    # -- administration (aqueue.transports.base.QueueAdmin) -----------------------------------

    async def queue_depths(self, queues: Sequence[str] | None = None) -> list[QueueDepth]:
        """Count each queue's messages; a lease that ran out counts as ready."""
        clock = time.monotonic()
        with self._lock:
            delayed = Counter(queue for _, _, queue, _ in self._delayed)
            if queues is None:
                found = {n for n, q in self._queues.items() if q.ready or q.leased} | set(delayed)
                found |= {q.dead[0].queue for q in self._queues.values() if q.dead}
                queues = sorted(found)
            out = []
            for name in queues:
                q = self._queues.get(name) or _Queue()
                unacked = sum(1 for s in q.leased.values() if s.lease_until > clock)
                dlq = self._queues.get(dead_letter_queue(name))
                out.append(
                    QueueDepth(
                        name,
                        ready=len(q.ready) + len(q.leased) - unacked,
                        delayed=delayed[name],
                        unacked=unacked,
                        dead=len(dlq.dead) if dlq else 0,
                    )
                )
            return out

    async def purge(self, queues: Sequence[str]) -> int:
        """Drop the ready and delayed messages of ``queues``; leased ones are kept."""
        names = set(queues)
        with self._lock:
            removed = 0
            for name in names:
                q = self._queues.get(name)
                if q is not None:
                    removed += len(q.ready)
                    q.ready.clear()
            kept = [entry for entry in self._delayed if entry[2] not in names]
            removed += len(self._delayed) - len(kept)
            heapq.heapify(kept)
            self._delayed = kept
            return removed

    async def purge_dead_letters(self, queue: str, limit: int | None = None) -> int:
        """Drop the oldest ``limit`` (default all) dead letters of ``queue``."""
        with self._lock:
            q = self._queues.get(dead_letter_queue(queue))
            if q is None:
                return 0
            count = len(q.dead) if limit is None else min(max(limit, 0), len(q.dead))
            del q.dead[:count]
            return count


def _wake(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` on its own event loop, from any thread; a loop already closed is skipped
    (the fetch waiting there can never resume, and must not fail the publish waking it)."""
    with contextlib.suppress(RuntimeError):  # "Event loop is closed" (even just now)
        fut.get_loop().call_soon_threadsafe(_set_result, fut)


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
