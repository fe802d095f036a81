"""The in-process transport (``memory://``): every role, as the reference implementation of its
Protocol. State lives in the Python process, one store per app (the app shares this transport
across event loops, so a worker's loop and a test's loop see the same queues).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from aqueue.transports.base import BaseTransport, BeatStore, Broker, ControlTransport, ResultBackend
from aqueue.transports.memory.beat import MemoryStore
from aqueue.transports.memory.broker import MemoryBroker
from aqueue.transports.memory.control import MemoryControl
from aqueue.transports.memory.results import MemoryBackend

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryControl", "MemoryStore", "Transport"]


class Transport(BaseTransport):
    """``memory://``: broker, results, control and beat store in this process."""

    roles: ClassVar[frozenset[str]] = frozenset({"broker", "results", "control", "beat"})
    one_per_process: ClassVar[bool] = True

    def _make_broker(self, options: Mapping[str, Any]) -> Broker:
        return MemoryBroker(self.url, options)

    def _make_results(self) -> ResultBackend:
        return MemoryBackend(self.url)

    def _make_control(self) -> ControlTransport:
        return MemoryControl(self.url)

    def _make_beat(self, namespace: str) -> BeatStore:
        return MemoryStore()

    async def close(self) -> None:
        """Close the roles (waking their waiters) but keep them and their state: the memory
        transport is the app's, whatever loop closes it."""
        for role in list(self._made.values()):
            await role.close()
