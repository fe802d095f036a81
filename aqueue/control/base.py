"""The ControlTransport Protocol: what remote control, revocations, heartbeats, events and
global rate limits need from a server, in one small interface.

Three primitives, each implemented once per transport (``memory``, ``sqlite``, ``redis``):

- **Channels** (``publish`` / ``subscribe``): fire-and-forget broadcast to whoever is
  subscribed at that moment, like Redis pub/sub. Control commands go to every worker on one
  channel; each reply goes back on a channel named by the command; events go on their own
  channel. A subscriber that is not listening misses what is published meanwhile, so nothing
  that must survive a restart travels only on a channel.
- **Tables** (``put`` / ``read`` / ``version``): small shared key-value maps with a per-entry
  expiry and a version number bumped by every change. Revocations, runtime rate limits and
  worker heartbeats live here, so a worker started later (or one that missed a broadcast) still
  sees them. Reading a table whole is for start-up and for the rare resync; ``version`` is the
  cheap check a worker makes on every heartbeat.
- **Token buckets** (``acquire``): a global rate limit, atomic on the server (one Lua script on
  Redis, one ``BEGIN IMMEDIATE`` transaction on SQLite).

Implementations are chosen by URL in :mod:`aqueue.control.transport`; the contract suite in
``tests/test_control_transport.py`` checks each the same way. All times are seconds (float).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = ["ControlTransport"]


@runtime_checkable
class ControlTransport(Protocol):
    """What the operations side of aqueue needs from a server."""

    async def connect(self) -> None:
        """Open connections and create what is needed. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """

    async def close(self) -> None:
        """Release connections and end every subscription. Idempotent."""

    async def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """Send ``messages`` (in order, one round trip where possible) to the current
        subscribers of ``channel``. Nobody subscribed: they are dropped.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[asyncio.Queue[bytes]]:
        """Listen on ``channel``: on entering, the subscription is live, and every message
        published afterwards is put on the returned queue, in order. Leaving unsubscribes.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    async def put(self, table: str, key: str, value: bytes | None, ttl: float | None) -> None:
        """Set (or with ``value=None`` delete) ``key`` in ``table`` and bump its version.

        Args:
            ttl: seconds until the entry expires (reads as missing), or ``None`` to keep it.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """

    async def read(self, table: str) -> tuple[int, dict[str, bytes]]:
        """The table's version and its unexpired entries, read at one moment.

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    async def version(self, table: str) -> int:
        """The table's version: it changes whenever an entry is put or deleted (0: never).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...

    async def acquire(self, bucket: str, rate: float, capacity: float) -> float:
        """Take one token from token bucket ``bucket``, atomically for every client.

        The bucket starts full with ``capacity`` tokens and gains ``rate`` per second up to
        ``capacity`` (see :func:`aqueue.ratelimit.refill`). An idle bucket may be forgotten.

        Returns:
            0 when a token was taken, else the seconds until the next one (nothing taken).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        ...
