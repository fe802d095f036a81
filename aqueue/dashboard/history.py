"""The dashboard's task history: one record per task, built from the workers' task events.

:class:`TaskHistory` keeps at most ``max_tasks`` records (the oldest seen go first) no older than
``max_age`` seconds, indexes them for the Tasks page's filters, and counts outcomes per time
bucket for the Overview's charts (:class:`Series`). It is plain in-memory state fed by
:meth:`TaskHistory.apply`; :mod:`aqueue.dashboard.store` keeps it on the server the events come
from, so a restarted dashboard starts with what the last one saw.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aqueue import states
from aqueue.dashboard.workflows import WorkflowIndex

__all__ = ["EVENT_STATES", "Bucket", "Series", "TaskFilter", "TaskHistory", "TaskRecord"]

#: The state each task event moves a task to (Celery's event and state names).
EVENT_STATES = {
    "task-received": states.RECEIVED,
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-revoked": states.REVOKED,
}

#: Seconds of history the Overview's charts can show (in one-second buckets).
WINDOW = 1800
#: Points of a chart; each sums ``span / POINTS`` seconds.
POINTS = 60
#: The shortest span a chart shows (seconds).
MIN_SPAN = 60

#: Each event type's name, one string for every timeline.
EVENT_NAMES = {kind: kind for kind in EVENT_STATES}
_REPEATED = frozenset({"name", "queue"})
_TEXT_FIELDS = ("name", "queue", "args", "kwargs", "result", "exception", "traceback", "reason")


@dataclass(slots=True)
class TaskRecord:
    """What the dashboard knows of one task.

    Attributes:
        id: the task id.
        name: the task's name.
        state: the latest state (``RECEIVED``, ``STARTED``, ``SUCCESS``...).
        worker: the hostname of the worker that received it last.
        args, kwargs: their ``repr`` as the worker sent it (shortened by the worker).
        result, exception, traceback: the outcome, as text.
        received, started, finished: epoch seconds, or ``None``.
        runtime: seconds the last run took, or ``None``.
        timeline: ``[event type, epoch seconds, worker]`` for every event seen, in order.
        parent_id, root_id, group_id: the task's place in a workflow.
    """

    id: str
    name: str | None = None
    state: str = states.PENDING
    queue: str | None = None
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    reason: str | None = None
    retries: int = 0
    runtime: float | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None
    updated: float = 0.0
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    timeline: list[list[Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (what :mod:`aqueue.dashboard.store` keeps)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskRecord:
        """Read back :meth:`to_json`; unknown keys are ignored.

        Every field is checked against its type, so that a row written by something else
        cannot break the pages and filters later (``null`` stands for a field's default).

        Raises:
            KeyError, TypeError, ValueError: ``data`` has no ``id``, is not a mapping, a field
                has the wrong type (text not a string, a time not a number...), or its
                timeline is not a list of ``[event, time, worker]``.
        """
        known = {k: v for k, v in data.items() if k in cls.__slots__}
        record = cls(id=str(known.pop("id")))
        for name, value in known.items():
            if value is not None:
                _check_field(name, value)
                setattr(record, name, value)
        for name in ("name", "queue", "worker", "state"):  # shared, as in apply()
            value = getattr(record, name)
            if isinstance(value, str):
                setattr(record, name, sys.intern(value))
        record.timeline = [_moment(item) for item in record.timeline]
        return record

    @property
    def wait(self) -> float | None:
        """Seconds between received and started, or ``None``."""
        if self.received is None or self.started is None:
            return None
        return max(0.0, self.started - self.received)


#: The fields of a stored record that are text.
_STRINGS = frozenset({*_TEXT_FIELDS, "state", "worker", "parent_id", "root_id", "group_id"})
#: The fields that are epoch seconds or durations.
_NUMBERS = frozenset({"runtime", "received", "started", "finished", "updated"})


def _check_field(name: str, value: Any) -> None:
    """Raises: TypeError: ``value`` is not of field ``name``'s type (the timeline: a list)."""
    if name in _STRINGS:
        ok = isinstance(value, str)
    elif name in _NUMBERS:
        ok = _number(value) is not None
    elif name == "retries":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # the timeline; its items are checked by _moment
        ok = isinstance(value, list)
    if not ok:
        raise TypeError(f"{name} is a {type(value).__name__}")


def _moment(item: Any) -> list[Any]:
    """One stored ``[event type, epoch seconds, worker]``, its strings shared.

    Raises:
        TypeError, ValueError: not a list of an event name, a number and a name or ``null``.
    """
    kind, when, worker = item
    if not isinstance(kind, str) or _number(when) is None:
        raise TypeError(f"timeline item {item!r} is not [event, time, worker]")
    if worker is not None and not isinstance(worker, str):
        raise TypeError(f"timeline item {item!r} names no worker")
    return [sys.intern(kind), when, None if worker is None else sys.intern(worker)]


@dataclass(slots=True)
class Bucket:
    """Outcomes counted in one interval (a second, or a chart point's seconds)."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    revoked: int = 0
    runtime_sum: float = 0.0
    runtime_n: int = 0
    wait_sum: float = 0.0
    wait_n: int = 0

    def add(self, other: Bucket) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Series:
    """Counts per second over the last :data:`WINDOW` seconds."""

    def __init__(self) -> None:
        self.buckets: dict[int, Bucket] = {}

    def at(self, when: float) -> Bucket | None:
        """The bucket of epoch second ``when``; ``None`` when it is outside the window."""
        key = int(when)
        if key <= int(time.time()) - WINDOW:
            return None
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket()
            if len(self.buckets) > WINDOW * 2:
                self.trim()
        return bucket

    def trim(self) -> None:
        """Forget the buckets that left the window."""
        oldest = int(time.time()) - WINDOW
        for key in [k for k in self.buckets if k <= oldest]:
            del self.buckets[key]

    def points(self, now: float | None = None) -> tuple[int, list[tuple[float, Bucket]]]:
        """The chart's points, oldest first: ``(seconds per point, [(start, sums)])``.

        The span runs from the oldest second with data (at least :data:`MIN_SPAN` seconds back,
        at most :data:`WINDOW`) to now, in :data:`POINTS` points.
        """
        last = int(time.time() if now is None else now)
        oldest = min((k for k in self.buckets if k > last - WINDOW), default=last)
        span = min(WINDOW, max(MIN_SPAN, last - oldest + 1))
        step = -(-span // POINTS)  # seconds per point, rounded up
        first = last - step * POINTS + 1
        out = []
        for p in range(POINTS):
            start = first + p * step
            total = Bucket()
            for key in range(start, start + step):
                bucket = self.buckets.get(key)
                if bucket is not None:
                    total.add(bucket)
            out.append((float(start), total))
        return step, out


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """The Tasks page's filters; empty fields match everything.

    Attributes:
        state, name, queue, worker: exact values.
        search: part of a task id (or a whole one).
        since: epoch seconds the task was last updated at or after.
    """

    state: str = ""
    name: str = ""
    queue: str = ""
    worker: str = ""
    search: str = ""
    since: float | None = None

    @property
    def empty(self) -> bool:
        fields = self.state or self.name or self.queue or self.worker or self.search
        return not fields and self.since is None

    def matches(self, r: TaskRecord) -> bool:
        return (
            (not self.state or r.state == self.state)
            and (not self.name or r.name == self.name)
            and (not self.queue or r.queue == self.queue)
            and (not self.worker or r.worker == self.worker)
            and (not self.search or self.search in r.id)
            and (self.since is None or r.updated >= self.since)
        )


class TaskHistory:
    """The bounded task history (see the module docstring).

    Args:
        max_tasks: records kept at most; the oldest seen go first.
        max_age: seconds a record is kept after its last event.
    """

    def __init__(self, max_tasks: int = 100_000, max_age: float = 86_400.0) -> None:
        self.max_tasks = max_tasks
        self.max_age = max_age
        self.tasks: dict[str, TaskRecord] = {}
        self.series = Series()
        self.workflows = WorkflowIndex()
        self.names: Counter[str] = Counter()
        self.queues: Counter[str] = Counter()
        self.workers: Counter[str] = Counter()
        self.state_counts: Counter[str] = Counter()
        self.dirty: dict[str, TaskRecord] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    # -- feeding -----------------------------------------------------------------------------

    def apply(self, event: Mapping[str, Any]) -> TaskRecord | None:
        """Apply one task event (a dict as :func:`aqueue.control.events.events` yields it);
        return the record it changed, or ``None`` for an event that is not about a task."""
        kind = event.get("type")
        task_id = event.get("uuid")
        state = EVENT_STATES.get(kind) if isinstance(kind, str) else None
        if state is None or not isinstance(task_id, str) or not task_id:
            return None
        when = _number(event.get("timestamp")) or time.time()
        record = self.tasks.get(task_id)
        if record is None:
            record = self._add(TaskRecord(id=task_id))
        self._unindex(record)
        hostname = event.get("hostname")
        worker = sys.intern(hostname) if isinstance(hostname, str) else None
        record.timeline.append([EVENT_NAMES[str(kind)], when, worker])
        if when >= record.updated:  # a late event (another worker's clock) adds to the timeline
            record.state = state
            record.updated = when
        self._fields(record, str(kind), event, when, worker)
        self._index(record)
        self._count(str(kind), record, when)
        if kind == "task-received":
            self.workflows.add(record)
        self.dirty[record.id] = record
        return record

    def load(self, records: Iterator[TaskRecord]) -> None:
        """Add records read back from the store (oldest first); later versions replace earlier."""
        for record in records:
            old = self.tasks.pop(record.id, None)
            if old is not None:
                self._unindex(old)
            self._add(record)
            self._index(record)
            for kind, when, _ in record.timeline:
                self._count(str(kind), record, float(when))
            if record.parent_id or record.group_id or record.root_id:
                self.workflows.add(record)

    def _add(self, record: TaskRecord) -> TaskRecord:
        self.tasks[record.id] = record
        while len(self.tasks) > self.max_tasks:
            self._forget(next(iter(self.tasks)))
        return record

    def _forget(self, task_id: str) -> None:
        record = self.tasks.pop(task_id)
        self._unindex(record)
        self.dirty.pop(task_id, None)
        self.workflows.forget(record)

    def expire(self, now: float | None = None) -> int:
        """Forget records older than ``max_age``; return how many."""
        oldest = (time.time() if now is None else now) - self.max_age
        old = [k for k, r in self.tasks.items() if r.updated and r.updated < oldest]
        for task_id in old:
            self._forget(task_id)
        self.series.trim()
        return len(old)

    def _fields(
        self, r: TaskRecord, kind: str, event: Mapping[str, Any], when: float, worker: str | None
    ) -> None:
        for name in _TEXT_FIELDS:
            value = event.get(name)
            if isinstance(value, str):
                # Names repeat across 100,000 records: one string each, not one per record.
                setattr(r, name, sys.intern(value) if name in _REPEATED else value)
        if kind == "task-received":
            r.received = when
            r.worker = worker or r.worker
            r.retries = int(_number(event.get("retries")) or 0)
            for link in ("parent_id", "root_id", "group_id"):
                value = event.get(link)
                if isinstance(value, str):
                    setattr(r, link, value)
        elif kind == "task-started":
            r.started = when
            r.worker = worker or r.worker
        elif kind in ("task-succeeded", "task-failed", "task-revoked"):
            r.finished = when
            r.runtime = _number(event.get("runtime"))

    def _count(self, kind: str, r: TaskRecord, when: float) -> None:
        bucket = self.series.at(when)
        if bucket is None:
            return
        if kind == "task-received":
            bucket.received += 1
        elif kind == "task-succeeded":
            bucket.succeeded += 1
        elif kind == "task-failed":
            bucket.failed += 1
        elif kind == "task-retried":
            bucket.retried += 1
        elif kind == "task-revoked":
            bucket.revoked += 1
        if kind in ("task-succeeded", "task-failed") and r.runtime is not None:
            bucket.runtime_sum += r.runtime
            bucket.runtime_n += 1
        elif kind == "task-started" and r.wait is not None:
            bucket.wait_sum += r.wait
            bucket.wait_n += 1

    def _index(self, r: TaskRecord) -> None:
        self.state_counts[r.state] += 1
        if r.name:
            self.names[r.name] += 1
        if r.queue:
            self.queues[r.queue] += 1
        if r.worker:
            self.workers[r.worker] += 1

    def _unindex(self, r: TaskRecord) -> None:
        for counter, key in (
            (self.state_counts, r.state),
            (self.names, r.name),
            (self.queues, r.queue),
            (self.workers, r.worker),
        ):
            if key and counter[key] > 0:
                counter[key] -= 1
                if not counter[key]:
                    del counter[key]

    # -- reading -----------------------------------------------------------------------------

    def query(self, where: TaskFilter, limit: int = 100) -> tuple[list[TaskRecord], int]:
        """The newest ``limit`` records matching ``where``, and how many match in all."""
        if where.search and where.search in self.tasks:  # a whole id: no scan
            return [self.tasks[where.search]], 1
        found: list[TaskRecord] = []
        if where.empty:
            for record in reversed(self.tasks.values()):
                found.append(record)
                if len(found) >= limit:
                    break
            return found, len(self.tasks)
        total = 0
        for record in reversed(self.tasks.values()):
            if where.matches(record):
                total += 1
                if total <= limit:
                    found.append(record)
        return found, total


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
