"""The pages' contents: one function per page, from the monitor's state to a template context.

Every function returns plain values (records, numbers, :class:`~aqueue.dashboard.charts.Chart`)
and reads no more than it shows: the Tasks page asks the history for one page of records, the
Workflows page lays out one workflow. Templates escape everything they print.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson

from aqueue import states
from aqueue.dashboard.charts import Chart, chart
from aqueue.dashboard.history import TaskFilter
from aqueue.dashboard.workflows import kind as workflow_kind
from aqueue.dashboard.workflows import layout
from aqueue.exceptions import AqueueError, ConfigurationError
from aqueue.message import decode_envelope

if TYPE_CHECKING:
    from starlette.datastructures import QueryParams

    from aqueue.dashboard.monitor import Monitor

__all__ = [
    "BEAT_DISABLED",
    "beat",
    "overview",
    "queues",
    "task",
    "tasks",
    "workers",
    "workflow",
    "workflows",
]

#: The control table where disabled dynamic beat entries are parked (name -> stored entry).
BEAT_DISABLED = "dashboard.beat_disabled"

#: Task states in the order the filters list them.
STATES = (
    states.RECEIVED,
    states.STARTED,
    states.SUCCESS,
    states.FAILURE,
    states.RETRY,
    states.REVOKED,
)

#: Time-range choices of the Tasks page: label -> seconds back.
RANGES = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21_600, "24h": 86_400}

PAGE_SIZE = 100


def overview(m: Monitor) -> dict[str, Any]:
    """Counts, charts of outcomes and latency, queue depths over time, workers online."""
    step, window = m.history.series.points()
    times = [start for start, _ in window]
    charts: list[Chart] = [
        chart(
            "Throughput",
            "tasks/s",
            times,
            {
                "succeeded": [b.succeeded / step for _, b in window],
                "received": [b.received / step for _, b in window],
            },
        ),
        chart(
            "Failures and retries",
            f"per {step}s",
            times,
            {
                "failed": [float(b.failed) for _, b in window],
                "retried": [float(b.retried) for _, b in window],
                "revoked": [float(b.revoked) for _, b in window],
            },
        ),
        chart(
            "Latency",
            "ms, mean",
            times,
            {
                "run time": [_mean_ms(b.runtime_sum, b.runtime_n) for _, b in window],
                "queue wait": [_mean_ms(b.wait_sum, b.wait_n) for _, b in window],
            },
        ),
    ]
    samples = list(m.depths)
    if samples:
        sums: dict[str, list[float]] = {"ready": [], "delayed": [], "leased": [], "dead": []}
        for _, depths in samples:
            sums["ready"].append(float(sum(d.ready for d in depths.values())))
            sums["delayed"].append(float(sum(d.delayed or 0 for d in depths.values())))
            sums["leased"].append(float(sum(d.unacked or 0 for d in depths.values())))
            sums["dead"].append(float(sum(d.dead for d in depths.values())))
        charts.append(chart("Queue depths", "messages", [t for t, _ in samples], sums))
    counts = m.history.state_counts
    return {
        "charts": charts,
        "counts": [(s, counts.get(s, 0)) for s in STATES],
        "total": len(m.history),
        "workers": m.workers,
        "queues": m.queues,
        "senders": sum(w.events for w in m.workers),
    }


def workers(m: Monitor) -> dict[str, Any]:
    """Every live worker with its counters, registered tasks and actions."""
    return {"workers": m.workers, "registered": m.registered}


def task_filter(params: QueryParams) -> TaskFilter:
    """The Tasks page's filters from its query string (unknown values are ignored)."""
    back = RANGES.get(params.get("range", ""))
    return TaskFilter(
        state=params.get("state", "") if params.get("state") in STATES else "",
        name=params.get("name", "")[:200],
        queue=params.get("queue", "")[:200],
        worker=params.get("worker", "")[:200],
        search=params.get("q", "").strip()[:200],
        since=None if back is None else time.time() - back,
    )


def tasks(m: Monitor, params: QueryParams) -> dict[str, Any]:
    """One page of the newest tasks matching the filters, and the filters' choices."""
    where = task_filter(params)
    found, total = m.history.query(where, PAGE_SIZE)
    h = m.history
    return {
        "tasks": found,
        "total": total,
        "where": where,
        "range": params.get("range", ""),
        "choices": {
            "state": STATES,
            "name": sorted(h.names),
            "queue": sorted(h.queues),
            "worker": sorted(h.workers),
            "range": list(RANGES),
        },
    }


async def task(m: Monitor, task_id: str) -> dict[str, Any]:
    """One task: its record, timeline, and what the result backend holds for it."""
    record = m.history.get(task_id)
    stored: dict[str, Any] | None = None
    if m.app.has_result_backend:
        try:
            info = await m.app.AsyncResult(task_id).info()
            stored = {
                "state": info.state,
                "result": _text(info.result),
                "traceback": info.traceback,
                "date_done": info.date_done,
                "retries": info.retries,
            }
        except AqueueError as exc:
            stored = {"error": str(exc)}
    workflow = m.history.workflows.of.get(task_id)
    return {"id": task_id, "task": record, "stored": stored, "workflow": workflow}


def workflows(m: Monitor) -> dict[str, Any]:
    """The newest workflows, each with its first task and its tasks' states counted."""
    rows = []
    for wf, ids in m.history.workflows.newest(50):
        records = [r for r in (m.history.get(t) for t in ids) if r is not None]
        counts: dict[str, int] = {}
        for record in records:
            counts[record.state] = counts.get(record.state, 0) + 1
        if records:
            rows.append(
                {
                    "id": wf,
                    "kind": workflow_kind(records),
                    "first": records[0],
                    "size": len(ids),
                    "counts": counts,
                }
            )
    return {"workflows": rows}


def workflow(m: Monitor, workflow_id: str) -> dict[str, Any]:
    """One workflow's graph."""
    ids = m.history.workflows.members.get(workflow_id, [])
    records = [r for r in (m.history.get(t) for t in ids) if r is not None]
    return {
        "id": workflow_id,
        "kind": workflow_kind(records) if records else "workflow",
        "graph": layout(ids, m.history.get) if ids else None,
    }


async def queues(m: Monitor) -> dict[str, Any]:
    """Queue depths, and the oldest dead letters of every queue that has some."""
    broker = await m.app.broker()
    dead = [d.queue for d in m.queues if d.dead]
    # One read per queue with dead letters, all at once rather than one after the other.
    found = await asyncio.gather(*(broker.dead_letters(queue, 50) for queue in dead))
    letters = {
        queue: [_letter(d.body, d.reason, d.time) for d in listed]
        for queue, listed in zip(dead, found, strict=True)
    }
    return {"queues": m.queues, "letters": letters}


def _letter(body: bytes, reason: str, when: float) -> dict[str, Any]:
    try:
        env = decode_envelope(body)
        return {"id": env["id"], "task": env["task"], "reason": reason, "time": when}
    except AqueueError:
        return {"id": None, "task": None, "reason": reason, "time": when}


async def beat(m: Monitor) -> dict[str, Any]:
    """Every beat entry with its next and last run, and the disabled (parked) ones."""
    app = m.app
    if not app.has_result_backend:
        return {"error": "beat keeps its entries with the results: configure a result backend"}
    try:
        entries = await app.beat.list()
        _, parked = await (await app.control_transport()).read(BEAT_DISABLED)
    except (ConfigurationError, AqueueError) as exc:
        return {"error": str(exc)}
    tz = ZoneInfo(app.conf.timezone)
    now = time.time()
    rows = []
    for entry in entries:
        after = max(now, entry.since or 0.0)
        rows.append(
            {
                "entry": entry,
                "schedule": repr(entry.schedule),
                "next": datetime.fromtimestamp(entry.schedule.next_tick(after, tz), tz),
                "last": None
                if entry.last_run is None
                else datetime.fromtimestamp(entry.last_run, tz),
            }
        )
    disabled = []
    for name, raw in sorted(parked.items()):
        try:
            task_name = orjson.loads(raw).get("task")
        except (orjson.JSONDecodeError, AttributeError):
            task_name = None
        disabled.append({"name": name, "task": task_name})
    return {"entries": rows, "disabled": disabled, "tasks": sorted(app.tasks), "error": None}


def _mean_ms(total: float, n: int) -> float:
    return 1000 * total / n if n else 0.0


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return repr(value)
