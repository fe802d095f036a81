"""Where beat keeps what its processes share: stored entries, last ticks, and tick claims.

The store lives next to the results, chosen by the result backend's URL - one module per kind
(:mod:`.memory`, :mod:`.sqlite`, :mod:`.redis`) - and is namespaced by the app's name, so two
apps sharing a Redis database keep separate schedules. It is not part of the ResultBackend
Protocol: results need no listing, and these few operations are beat's alone.

A *claim* decides which beat sends a tick. It is a small record per (entry, tick) with a state
and the claiming beat's token:

- :meth:`BeatStore.claim` creates it as *pending* for ``lease`` seconds if there is none (or the
  old one ran out) and answers :attr:`Claim.OWN`; if it is already this token's, it answers
  ``OWN`` again, so a call retried after a lost reply (the Redis client retries on connection
  errors) cannot turn a won claim into a lost one. Otherwise it answers ``DONE`` (another beat
  sent it) or ``PENDING`` (another beat is sending it).
- :meth:`BeatStore.confirm`, after the message is published, marks it *done* for ``keep``
  seconds and raises the entry's last tick.

A beat that dies between claiming and confirming leaves a pending claim that runs out after
``lease`` seconds; another beat then claims the tick and sends it (with the same task id).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aqueue.exceptions import ConfigurationError

if TYPE_CHECKING:
    from aqueue.app import Aqueue

__all__ = ["BeatStore", "Claim", "Snapshot", "store_for"]


class Claim(enum.Enum):
    """The answer to :meth:`BeatStore.claim`."""

    OWN = "own"  # this beat holds the claim: send the tick, then confirm
    DONE = "done"  # another beat sent the tick
    PENDING = "pending"  # another beat holds the claim and has not confirmed yet


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one read of the store returns.

    Attributes:
        entries: stored entries, name -> :meth:`Entry.encode` bytes.
        last: the last confirmed tick of each entry, in epoch milliseconds.
    """

    entries: dict[str, bytes]
    last: dict[str, int]


class BeatStore(Protocol):
    """Beat's shared state. Ticks are epoch milliseconds; durations are seconds."""

    async def connect(self) -> None:
        """Open connections. Idempotent.

        Raises:
            BrokerConnectionError: the store cannot be reached.
        """

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def load(self) -> Snapshot:
        """Read every stored entry and every entry's last tick, in one round trip."""
        ...

    async def put(self, name: str, data: bytes) -> None:
        """Store (or replace) the entry ``name``."""

    async def remove(self, name: str) -> bool:
        """Delete the stored entry ``name`` and its last tick; ``False`` if it was not stored."""
        ...

    async def claim(self, name: str, tick: int, token: str, lease: float) -> Claim:
        """Claim ``tick`` of ``name`` for ``token``, pending for ``lease`` seconds (see above)."""
        ...

    async def confirm(self, name: str, tick: int, token: str, keep: float) -> None:
        """Mark the claim done for ``keep`` seconds; raise the entry's last tick to ``tick``."""


def store_for(app: Aqueue) -> BeatStore:
    """The beat store of ``app``, by its result backend URL (not yet connected).

    Raises:
        ConfigurationError: no result backend is configured (e.g. an AMQP broker alone).
    """
    url = app.conf.resolved_backend_url()
    if url is None:
        raise ConfigurationError(
            "beat keeps its claims and stored entries in the result backend: set "
            "result_backend (e.g. 'redis://127.0.0.1:6379/1' or 'sqlite:///aqueue.db')"
        )
    scheme = url.split("://", 1)[0].lower()
    # Imported here: a Redis client costs an import that an app on SQLite need not pay.
    if scheme == "memory":
        from aqueue.beat.store.memory import MemoryStore

        return app._shared_memory("beat-store", url, MemoryStore)
    if scheme == "sqlite":
        from aqueue.beat.store.sqlite import SQLiteStore

        return SQLiteStore(url, app.main)
    if scheme in ("redis", "rediss"):
        from aqueue.beat.store.redis import RedisStore

        return RedisStore(url, app.main)
    raise ConfigurationError(f"beat cannot keep its state in {url!r}: use redis:// or sqlite://")
