"""The task history kept where the events land: a journal in a control-transport table.

The workers publish their events on the control transport (:mod:`aqueue.control.events`); a
running dashboard writes what it learnt from them back to the same server, in the table
:data:`TABLE`, so that a dashboard started later - or restarted mid-run - begins with what
happened before. Nothing of this runs in a worker: with no dashboard, nothing is written.

Every flush (once a second while events come) puts *one* entry: the records that changed since
the last flush, as a JSON list, keyed by the time of the flush, with ``max_age`` seconds as its
time to live. One write per second whatever the task rate, on every transport (Redis: one
``HSET``; SQLite: one transaction). Reading back applies the entries oldest first, so the last
version of each record wins. The journal is trimmed from its oldest end to twice ``max_tasks``
record versions (a task seen in two flushes counts twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import orjson

from aqueue.dashboard.history import TaskRecord

if TYPE_CHECKING:
    from aqueue.transports.base import ControlTransport

__all__ = ["TABLE", "HistoryStore"]

logger = logging.getLogger("aqueue.dashboard")

#: The control table holding the journal.
TABLE = "dashboard.history"


class HistoryStore:
    """The journal of task records in ``transport``'s :data:`TABLE`.

    Args:
        transport: the app's control transport (connected).
        max_tasks: the history's size; the journal keeps twice as many record versions.
        max_age: seconds each journal entry lives.
    """

    def __init__(self, transport: ControlTransport, max_tasks: int, max_age: float) -> None:
        self.transport = transport
        self.limit = 2 * max_tasks
        self.max_age = max_age
        self._chunks: list[tuple[str, int]] = []  # (key, records), oldest first
        self._last_key = ""

    async def load(self) -> Iterator[TaskRecord]:
        """The stored records, oldest version first (unreadable entries are skipped).

        Raises:
            BrokerConnectionError: the server cannot be reached.
        """
        _, entries = await self.transport.read(TABLE)
        decoded: list[list[TaskRecord]] = []
        for key in sorted(entries):
            try:
                items = orjson.loads(entries[key])
                records = [TaskRecord.from_json(item) for item in items]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                logger.warning("skipped an unreadable history entry %s: %s", key, exc)
                continue
            self._chunks.append((key, len(records)))
            decoded.append(records)
        if self._chunks:
            self._last_key = self._chunks[-1][0]
        return (record for chunk in decoded for record in chunk)

    async def save(self, records: Iterable[TaskRecord]) -> None:
        """Append one journal entry with ``records``, then trim the oldest entries.

        Raises:
            BrokerConnectionError: the server cannot be reached (nothing is lost from memory).
        """
        items = [r.to_json() for r in records]
        if not items:
            return
        key = f"{time.time_ns():020d}"
        if key <= self._last_key:  # a clock step back must not reorder the journal
            key = f"{int(self._last_key) + 1:020d}"
        self._last_key = key
        await self.transport.put(TABLE, key, orjson.dumps(items), self.max_age)
        self._chunks.append((key, len(items)))
        total = sum(n for _, n in self._chunks)
        while len(self._chunks) > 1 and total > self.limit:
            old, n = self._chunks.pop(0)
            total -= n
            await self.transport.put(TABLE, old, None, None)
