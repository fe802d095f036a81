"""The ResultBackend Protocol: where task states and results are stored and awaited.

A backend stores opaque records (bytes, see :mod:`aqueue.outcome`) under task ids and tells
waiting clients when one changes. The core owns the record format, timestamps and expiry policy;
a backend only stores, reads, counts and notifies.

Waiting is push, not poll, wherever the server allows: :meth:`ResultBackend.watch` subscribes
first, the caller then reads the current record, then waits on the queue for changes - so no
update can fall between the read and the wait. One subscription per client serves every watched
id (Redis: one pub/sub connection). Backends with no notification across processes (SQLite)
check the watched ids in one query per interval, never one per id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable


@runtime_checkable
class ResultBackend(Protocol):
    """What the core needs from a result store. All times are seconds (float)."""

    async def connect(self) -> None:
        """Open connections. Idempotent.

        Raises:
            BrokerConnectionError: the server cannot be reached; the message says which and why.
        """

    async def close(self) -> None:
        """Release connections and end every watch. Idempotent."""

    async def store(
        self,
        items: Sequence[tuple[str, bytes]],
        expires: float | None,
        reply_to: Mapping[str, str] | None = None,
    ) -> None:
        """Store each ``(task_id, record)``, replacing what was there, and notify watchers.

        Args:
            items: task ids and their encoded records; stored in one round trip where possible.
            expires: seconds until the records may be deleted, or ``None`` to keep them.
            reply_to: task id -> the sending client's reply channel (``Message.reply_to``),
                for backends with reply channels (:mod:`aqueue.backends.inbox`); others
                ignore it.
        """

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Read the records of ``task_ids`` in one round trip; ``None`` where nothing is stored."""

    async def delete(self, task_ids: Sequence[str]) -> None:
        """Forget the records of ``task_ids``. Deleting a missing id is harmless."""

    async def incr(self, key: str, amount: int, expires: float | None) -> int:
        """Atomically add ``amount`` to the counter ``key`` (created at 0) and return the new value.

        Not idempotent: a call retried after a lost reply counts twice. To count completions of
        at-least-once work (chord members), use :meth:`add_member`.
        """

    async def add_member(self, key: str, member: str, expires: float | None) -> int:
        """Atomically add ``member`` to the set ``key`` (created empty); return the set's size.

        Idempotent: adding a member already present changes nothing and returns the same size,
        so a call retried after a lost reply, or a task run twice, counts once. Concurrent calls
        from any number of processes each see the size right after their own addition. Used for
        chords: the header member whose addition makes the set as large as the header triggers
        the body (see :mod:`aqueue.worker.workflow`).

        Args:
            key: the set's name.
            member: the element to add (e.g. a task id).
            expires: seconds until the whole set may be deleted (restarted on each call), or
                ``None`` to keep its deadline.
        """

    def watch(self, task_id: str) -> AbstractAsyncContextManager[asyncio.Queue[bytes]]:
        """Subscribe to changes of ``task_id``'s record.

        On entering, the subscription is live; every record stored for the id afterwards is put
        on the returned queue (in order). Leaving unsubscribes.
        """
        ...
