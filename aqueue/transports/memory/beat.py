"""The beat store of ``memory://`` result backends: dicts under a lock, one per app."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aqueue.transports.base import Claim, Snapshot

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _MemoryClaim:
    done: bool
    token: str
    until: float


class MemoryStore:
    """The store of ``memory://`` backends: one per app, shared by every loop of the process.

    Args:
        clock: seconds on a monotonic clock, for claim expiry (injectable in tests).
    """

    _PURGE_EVERY = 60.0  # seconds between sweeps of expired claims

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, bytes] = {}
        self._last: dict[str, int] = {}
        self._claims: dict[tuple[str, int], _MemoryClaim] = {}
        self._purged = clock()

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release; the state stays for the process's other beats."""

    async def load(self) -> Snapshot:
        """Copy the entries and last ticks."""
        with self._lock:
            return Snapshot(dict(self._entries), dict(self._last))

    async def put(self, name: str, data: bytes) -> None:
        """Store the entry."""
        with self._lock:
            self._entries[name] = data

    async def remove(self, name: str) -> bool:
        """Delete the entry and its last tick."""
        with self._lock:
            self._last.pop(name, None)
            return self._entries.pop(name, None) is not None

    async def claim(self, name: str, tick: int, token: str, lease: float) -> Claim:
        """Claim under the lock."""
        now = self._clock()
        with self._lock:
            if now - self._purged >= self._PURGE_EVERY:
                self._purged = now
                self._claims = {k: c for k, c in self._claims.items() if c.until > now}
            found = self._claims.get((name, tick))
            if found is None or found.until <= now:
                self._claims[(name, tick)] = _MemoryClaim(False, token, now + lease)
                return Claim.OWN
            if found.token == token:
                return Claim.OWN
            return Claim.DONE if found.done else Claim.PENDING

    async def confirm(self, name: str, tick: int, token: str, keep: float) -> None:
        """Mark done and raise the last tick under the lock."""
        with self._lock:
            self._claims[(name, tick)] = _MemoryClaim(True, token, self._clock() + keep)
            self._last[name] = max(tick, self._last.get(name, tick))
