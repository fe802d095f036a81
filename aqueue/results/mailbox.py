"""Reply channels: one subscription per client for the results of the tasks it sent.

Waiting on a result through its own channel costs a client three commands per task (SUBSCRIBE,
a read, UNSUBSCRIBE) and most of its CPU under load. Instead, a client that can (the Redis result
backend) subscribes once to a channel of its own and names it in every message it sends
(``Message.reply_to``, as AMQP's ``reply_to`` property and Celery's ``rpc://`` backend do). A
worker storing records of such messages also publishes them there, many in one ``PUBLISH``
(:func:`pack`). The client puts each arriving record in the :class:`Mailbox` of its task id,
where the task's :class:`~aqueue.results.result.AsyncResult` reads it.

Nothing changes for anyone else: every record is still stored and published on its task's own
channel, so ``AsyncResult(id)`` awaited in another process works as before.

Why no record is missed: the reply subscription is confirmed before the first message naming it
is published, and the mailbox exists before its message is published. A mailbox lives as long as
its handle (the inbox holds it weakly), so records of tasks nobody can await any more are dropped.
After a reconnect, records published while disconnected are read back (see the Redis backend).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence

from aqueue.exceptions import BrokerConnectionError

# The records of every mailbox that has none yet: never appended to (put() replaces it).
_NO_RECORDS: list[bytes] = []


class Mailbox:
    """Every record that arrived for one task id, in order, for any number of readers.

    Records are kept (a task has a handful) so that each reader - several ``get()`` calls, a
    ``then()`` and an ``on_message`` stream on one handle, in any number of asyncio tasks - sees
    all of them from its own position (:meth:`read_from`); none takes them from another.

    Attributes:
        owner: the backend instance whose inbox holds this mailbox; a handle awaited on another
            event loop (another backend instance) falls back to watching its task's channel.
    """

    __slots__ = ("__weakref__", "_boxes", "_ended", "_records", "_task_id", "_waiters", "owner")

    def __init__(
        self,
        owner: object,
        boxes: dict[str, weakref.ref[Mailbox]] | None = None,
        task_id: str = "",
    ) -> None:
        self.owner = owner
        # Both made on first use: most mailboxes get one record and no waiter, and each list
        # is one more object per waiting send for the garbage collector to scan.
        self._records: list[bytes] = _NO_RECORDS
        self._waiters: list[asyncio.Future[None]] | None = None
        self._boxes = boxes  # the inbox's entries (by task_id), which this leaves when dropped
        self._task_id = task_id
        self._ended: str | None = None  # why no more records come (its backend closed)

    def __del__(self) -> None:
        boxes = self._boxes
        if boxes is None:
            return
        ref = boxes.get(self._task_id)
        if ref is not None:
            held = ref()  # still this mailbox here (dropped at refcount 0), or dead (a cycle)
            if held is None or held is self:
                del boxes[self._task_id]

    def size(self) -> int:
        """How many records have arrived (a reader starting here sees only later ones)."""
        return len(self._records)

    def latest(self) -> bytes | None:
        """The last record that arrived, or ``None`` before the first."""
        return self._records[-1] if self._records else None

    def put(self, record: bytes) -> None:
        """Add ``record`` (an encoded result record) and wake every reader."""
        if self._records is _NO_RECORDS:
            self._records = [record]
        else:
            self._records.append(record)
        waiters, self._waiters = self._waiters or (), None
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def end(self, reason: str) -> None:
        """No more records come (the backend closed): wake every reader; once a reader has
        the records that arrived before, :meth:`read_from` raises instead of waiting.

        Args:
            reason: the error's message, naming the backend and saying that it closed.
        """
        if self._ended is None:
            self._ended = reason
        waiters, self._waiters = self._waiters or (), None
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def read_from(self, position: int) -> list[bytes]:
        """The records from index ``position`` on, waiting until there is at least one.

        A reader keeps its position (``position + len(returned)``) between calls.

        Raises:
            BrokerConnectionError: the mailbox ended (:meth:`end`) with nothing past
                ``position``.
        """
        while len(self._records) <= position:
            if self._ended is not None:
                raise BrokerConnectionError(self._ended)
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)  # cancelled or timed out before a put
        return self._records[position:]


class Inbox:
    """The mailboxes of one client, by task id (held weakly: see the module docstring).

    A plain dict of weak references, each mailbox deleting its own entry when it is dropped:
    registering one is a dict insert (a ``WeakValueDictionary`` adds a callback object per entry).
    """

    def __init__(self) -> None:
        self._boxes: dict[str, weakref.ref[Mailbox]] = {}

    def expect(self, task_id: str, owner: object) -> Mailbox:
        """The mailbox for ``task_id``, created if needed; keep it alive while waiting."""
        box = self.get(task_id)
        if box is None:
            box = Mailbox(owner, self._boxes, task_id)
            self._boxes[task_id] = weakref.ref(box)
        return box

    def get(self, task_id: str) -> Mailbox | None:
        """``task_id``'s mailbox if a handle still holds it, else ``None`` (nothing created)."""
        ref = self._boxes.get(task_id)
        return None if ref is None else ref()

    def put(self, task_id: str, record: bytes) -> bool:
        """Give ``record`` to ``task_id``'s mailbox; False if nobody expects that id."""
        box = self.get(task_id)
        if box is None:
            return False
        box.put(record)
        return True

    def deliver(self, payload: bytes) -> None:
        """Dispatch a reply-channel message (see :func:`pack`).

        Raises:
            ValueError: ``payload`` is not a packed batch (records before the fault are kept).
        """
        for task_id, record in unpack(payload):
            self.put(task_id, record)

    def __len__(self) -> int:
        return len(self.expected())

    def expected(self) -> list[str]:
        """Task ids whose mailbox is alive."""
        return [task_id for task_id, ref in list(self._boxes.items()) if ref() is not None]

    def clear(self, reason: str = "the result backend was closed") -> None:
        """Forget every mailbox (the backend closed), ending each one still held
        (:meth:`Mailbox.end`): its readers are told rather than left waiting for ever.

        Args:
            reason: the message of the error its readers get.
        """
        boxes = [ref() for ref in self._boxes.values()]
        self._boxes.clear()
        for box in boxes:
            if box is not None:
                box.end(reason)


def pack(items: Sequence[tuple[str, bytes]]) -> bytes:
    """Frame ``(task id, record)`` pairs as ``<len>:<id><len>:<record>`` repeated.

    Length-prefixed rather than JSON, so a record in any result serializer travels as is.
    """
    parts: list[bytes] = []
    for task_id, record in items:
        tid = task_id.encode()
        parts.append(b"%d:%s%d:" % (len(tid), tid, len(record)))
        parts.append(record)
    return b"".join(parts)


def unpack(payload: bytes) -> list[tuple[str, bytes]]:
    """The pairs :func:`pack` framed, in order.

    Raises:
        ValueError: a frame is malformed or cut short.
    """
    out: list[tuple[str, bytes]] = []
    pos, end = 0, len(payload)
    while pos < end:
        colon = payload.index(b":", pos)
        size = int(payload[pos:colon])
        tid_end = colon + 1 + size
        task_id = payload[colon + 1 : tid_end].decode()
        colon = payload.index(b":", tid_end)
        size = int(payload[tid_end:colon])
        rec_end = colon + 1 + size
        if rec_end > end or size < 0:
            raise ValueError("reply batch cut short")
        out.append((task_id, payload[colon + 1 : rec_end]))
        pos = rec_end
    return out
