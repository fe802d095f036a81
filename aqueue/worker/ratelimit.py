"""Task rate limits: ``rate_limit="10/m"``, enforced by token buckets, global by default.

A rate is ``"<n>/s"``, ``"<n>/m"`` or ``"<n>/h"`` (a bare number is per second, as in Celery);
``None``, ``""`` or ``0`` means no limit. Each rate-limited task has one bucket:

- **Bucket semantics** (Celery's, from kombu's ``TokenBucket``): the bucket holds at most one
  token and refills at the rate; it starts full. So ``"5/s"`` runs the first task at once and
  then one every 0.2 s - at most 5 in any one second, with no burst after a quiet spell.
- **Scope** (the ``rate_limit_scope`` setting): ``"global"`` (the default) keeps the bucket in
  the control transport (:mod:`aqueue.control`), so the rate holds across every worker and host:
  one Lua script on Redis (timed by the Redis server's clock), one transaction on SQLite, a lock
  on the in-process memory transport. ``"worker"`` keeps one bucket per worker, in memory:
  Celery's meaning, where N workers together run at N times the rate.

In the worker, :class:`RateGate` sits between the fetcher and the runners. A fetched message of
a rate-limited task is *parked* - it holds a prefetch place (its lease is renewed like any held
message) but no concurrency slot - until its bucket grants a token. One drain coroutine per task
asks the bucket, and sleeps exactly until the next token when there is none: no polling, no
per-message timer. A worker parks at most half its prefetch for one task; beyond that a message
is *deferred*: published again with an eta of when its turn comes at the current rate, and the
fetched copy acked, so a backlog of a slow task cannot fill the worker's prefetch and starve the
other tasks of its queue.

A rate changed at runtime (``aqueue control rate_limit``) applies at once to every message the
workers hold; a message already deferred comes back at the time planned under the old rate, and
then runs at the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aqueue.exceptions import AqueueError, ConfigurationError
from aqueue.transports import Delivery

if TYPE_CHECKING:
    from aqueue.transports.base import ControlTransport

__all__ = [
    "SCOPES",
    "Bucket",
    "LocalBucket",
    "RateGate",
    "SharedBucket",
    "parse_rate",
    "refill",
]

logger = logging.getLogger("aqueue.worker.ratelimit")

SCOPES = ("global", "worker")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")

#: Pause (seconds) before asking a bucket again after the control transport failed.
RETRY_AFTER_ERROR = 1.0


def parse_rate(value: Any) -> float | None:
    """Tasks per second allowed by ``value``, or ``None`` for no limit.

    Args:
        value: ``"10/m"``, ``"5/s"``, ``"100/h"``, a number (per second), or ``None``/``""``/``0``.

    Raises:
        ConfigurationError: ``value`` is not a rate.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ConfigurationError(f"rate_limit must be like '10/m', '5/s' or '100/h', not {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), 1.0
    else:
        match = _RATE.match(str(value)) if isinstance(value, str) else None
        if match is None:
            raise ConfigurationError(
                f"rate_limit must be like '10/m', '5/s' or '100/h' (a bare number is per "
                f"second), not {value!r}"
            )
        number, unit = float(match.group(1)), _UNITS[match.group(2) or "s"]
    if number < 0 or not math.isfinite(number):
        raise ConfigurationError(f"rate_limit must not be negative, not {value!r}")
    return number / unit if number > 0 else None


def refill(
    tokens: float, updated: float, now: float, rate: float, capacity: float
) -> tuple[float, float]:
    """One token bucket step: refill since ``updated``, then take a token if there is one.

    The same arithmetic as the Redis Lua script and the SQLite transaction, so every scope
    behaves alike.

    Args:
        tokens: tokens in the bucket at ``updated``.
        updated: when ``tokens`` was computed (seconds, any clock consistent with ``now``).
        now: the current time on that clock.
        rate: tokens added per second.
        capacity: the most tokens the bucket holds.

    Returns:
        ``(tokens_left, wait)``: ``wait`` is 0 when a token was taken, else the seconds until the
        next token (nothing taken).
    """
    tokens = min(capacity, tokens + max(0.0, now - updated) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class Bucket(Protocol):
    """Where a task's tokens come from: a worker's own, or shared through the control transport."""

    async def acquire(self, name: str, rate: float) -> float:
        """Take a token of bucket ``name`` refilled at ``rate`` per second.

        Returns:
            0 when a token was taken, else the seconds until the next one (nothing taken).

        Raises:
            BrokerConnectionError: a shared bucket cannot be reached.
        """
        ...


class LocalBucket:
    """Buckets kept in this process (``rate_limit_scope="worker"``): Celery's per-worker rate."""

    def __init__(self, capacity: float = 1.0) -> None:
        self.capacity = capacity
        self._state: dict[str, tuple[float, float]] = {}

    async def acquire(self, name: str, rate: float) -> float:
        """Take a token of ``name`` if there is one; see :func:`refill`."""
        now = time.monotonic()
        tokens, updated = self._state.get(name, (self.capacity, now))
        tokens, wait = refill(tokens, updated, now, rate, self.capacity)
        self._state[name] = (tokens, now)
        return wait


class SharedBucket:
    """Buckets in the control transport (``rate_limit_scope="global"``): one rate for every
    worker of the app, on every host. A bucket is named ``task:<name>``."""

    def __init__(self, transport: ControlTransport, capacity: float = 1.0) -> None:
        self.transport = transport
        self.capacity = capacity

    async def acquire(self, name: str, rate: float) -> float:
        """Take a token of ``name``'s shared bucket; see :meth:`ControlTransport.acquire`."""
        return await self.transport.acquire(f"task:{name}", rate, self.capacity)


@dataclass(slots=True)
class Parked:
    """A message waiting in a worker for its task's token."""

    task_id: str
    task: str
    delivery: Delivery
    since: float  # epoch seconds it was parked


class RateGate:
    """Holds the messages of rate-limited tasks until their bucket grants a token.

    Args:
        bucket: where tokens come from.
        deliver: hands a message on to the runners (it keeps its place among held messages).
        defer: publishes a message again with an eta (epoch seconds) and acks the fetched copy.
        revoked: task ids revoked: such a message is handed on at once, without a token, so the
            runner discards it.
        park_limit: the most messages parked per task; more are deferred.
    """

    def __init__(
        self,
        bucket: Bucket,
        deliver: Callable[[Delivery], None],
        defer: Callable[[Delivery, float], Awaitable[bool]],
        revoked: Container[str] = frozenset(),
        park_limit: int = 100,
    ) -> None:
        self.bucket = bucket
        self._deliver = deliver
        self._defer = defer
        self.revoked = revoked
        self.park_limit = max(1, park_limit)
        self._rates: dict[str, float] = {}
        self._parked: dict[str, deque[Parked]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._next_deferred: dict[str, float] = {}  # epoch seconds after the last deferred eta
        self._deferring: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def active(self) -> bool:
        """True when any task has a rate limit (the worker only looks at messages then)."""
        return bool(self._rates)

    def rate(self, name: str) -> float | None:
        """Tasks per second allowed for task ``name``, or ``None``."""
        return self._rates.get(name)

    def set_rate(self, name: str, rate: float | None) -> None:
        """Change (or with ``None`` remove) a task's rate; parked messages see it at once."""
        if rate is None:
            self._rates.pop(name, None)
        else:
            self._rates[name] = rate
        self._next_deferred.pop(name, None)
        event = self._changed.get(name)
        if event is not None:
            event.set()

    def parked(self) -> list[Parked]:
        """Every parked message, oldest first per task."""
        return [p for queue in self._parked.values() for p in queue]

    def submit(self, task_id: str, name: str, delivery: Delivery) -> bool:
        """Take ``delivery`` if task ``name`` is rate-limited; False to run it without a token."""
        rate = self._rates.get(name)
        if rate is None or self._closed:
            return False
        queue = self._parked.setdefault(name, deque())
        if len(queue) >= self.park_limit and task_id not in self.revoked:
            deferring = asyncio.create_task(self._defer_one(Parked(task_id, name, delivery, 0.0)))
            self._deferring.add(deferring)
            deferring.add_done_callback(self._deferring.discard)
            return True
        self._park(Parked(task_id, name, delivery, time.time()))
        return True

    async def close(self) -> list[Delivery]:
        """Stop draining; return the parked messages (the worker releases them)."""
        self._closed = True
        if self._deferring:
            await asyncio.wait(list(self._deferring))
        drains = list(self._drains.values())
        for drain in drains:
            drain.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        left = [p.delivery for p in self.parked()]
        self._parked.clear()
        return left

    def _park(self, parked: Parked) -> None:
        self._parked.setdefault(parked.task, deque()).append(parked)
        if parked.task not in self._drains and not self._closed:
            self._changed[parked.task] = asyncio.Event()
            self._drains[parked.task] = asyncio.create_task(self._drain(parked.task))

    async def _defer_one(self, parked: Parked) -> None:
        name = parked.task
        rate = self._rates.get(name)
        now = time.time()
        if rate is None:
            parked.since = now
            self._park(parked)  # the limit was lifted meanwhile: the drain hands it on
            return
        # Successive deferrals are spread one token apart, after the messages parked ahead.
        ahead = len(self._parked.get(name, ()))
        eta = max(now + ahead / rate, self._next_deferred.get(name, 0.0))
        self._next_deferred[name] = eta + 1.0 / rate
        if not await self._defer(parked.delivery, eta):
            # It could not be published again: keep it here after all, over the limit.
            parked.since = now
            self._park(parked)

    async def _drain(self, name: str) -> None:
        """Hand ``name``'s parked messages on, one per token, until none is left."""
        queue = self._parked[name]
        changed = self._changed[name]
        try:
            while queue:
                head = queue[0]
                rate = self._rates.get(name)
                if rate is None or head.task_id in self.revoked:
                    self._deliver(queue.popleft().delivery)
                    continue
                changed.clear()
                try:
                    wait = await self.bucket.acquire(name, rate)
                except AqueueError as exc:
                    logger.error("rate limit bucket of %s unavailable: %s", name, exc)
                    wait = RETRY_AFTER_ERROR
                if wait <= 0:
                    self._deliver(queue.popleft().delivery)
                    continue
                # Until the next token, or until the rate changes (control rate_limit). Not
                # wait_for: on 3.11 it loses close()'s cancel when a rate change comes in the
                # same step, and the drain would go on handing messages out after close().
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await changed.wait()
        finally:
            self._drains.pop(name, None)
            self._changed.pop(name, None)
            if not queue:
                self._parked.pop(name, None)
