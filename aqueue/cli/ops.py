"""The operations commands: ``inspect``, ``control``, ``status``, ``purge``, ``dlq``, ``events``.

The functions in :data:`COMMANDS` are the commands. Each prints a table by default and JSON
with ``--json`` (``events`` always prints JSON lines), and exits with 0 on success, 1 when no
worker replied in time, 2 on a usage or configuration error (as ``worker`` and ``call`` do).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from aqueue.app import Aqueue
from aqueue.cli._common import app_spec, run_with_app, split
from aqueue.cli.options import AppOption
from aqueue.control.client import DEFAULT_TIMEOUT, by_worker
from aqueue.control.protocol import Reply
from aqueue.exceptions import AqueueError, ConfigurationError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["COMMANDS", "control", "dlq", "events", "inspect", "purge", "status"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _check_seconds(value: float | None) -> float | None:
    """A ``--timeout`` value, if it is a finite number of seconds, 0 or more (``None``: none
    given).

    Raises:
        typer.BadParameter: ``nan``, ``inf`` or a negative number; typer prints it with the
            usage and exits with code 2 (``inf`` would wait forever when no worker is alive).
    """
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value:g} is not a number of seconds (0 or more)")
    return value


TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", "-t", callback=_check_seconds, help="Seconds to wait for replies."),
]
DestinationOption = Annotated[
    str | None,
    typer.Option("-d", "--destination", help="Comma-separated worker hostnames (default: all)."),
]
QueuesOption = Annotated[
    str | None, typer.Option("-Q", "--queues", help="Comma-separated queue names.")
]
ForceOption = Annotated[bool, typer.Option("-f", "--force", help="Do not ask for confirmation.")]


class InspectCommand(enum.StrEnum):
    """What ``aqueue inspect`` asks the workers."""

    active = "active"
    registered = "registered"
    scheduled = "scheduled"
    reserved = "reserved"
    stats = "stats"
    revoked = "revoked"
    ping = "ping"


class ControlCommand(enum.StrEnum):
    """What ``aqueue control`` tells the workers."""

    ping = "ping"
    revoke = "revoke"
    rate_limit = "rate_limit"
    shutdown = "shutdown"
    add_consumer = "add_consumer"
    cancel_consumer = "cancel_consumer"


class DlqCommand(enum.StrEnum):
    """What ``aqueue dlq`` does with a dead-letter queue."""

    list = "list"
    replay = "replay"
    purge = "purge"


# -- plumbing ------------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console  # rich loads in 50 ms: only for commands that print

    # Pipes get a wide, plain table: scripts grep it, and ids must not be folded.
    # Replies are data, not rich markup: "[rate_limit=10/m]" must print as it is.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False, markup=False)


def _print_json(value: Any) -> None:
    typer.echo(orjson.dumps(value, default=repr, option=orjson.OPT_INDENT_2).decode())


def _ago(epoch: Any) -> str:
    return _duration(time.time() - float(epoch)) if isinstance(epoch, int | float) else "-"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _running(item: dict[str, Any]) -> str:
    """How long an active task has run, and whether past its soft deadline."""
    runtime, deadline = item.get("runtime"), item.get("soft_deadline")
    if not isinstance(runtime, int | float):  # a worker from before runtime was reported
        return f"running {_ago(item.get('time_start'))}"
    text = f"running {_duration(runtime)}"
    if isinstance(deadline, int | float) and runtime > deadline:
        text += f", past its soft deadline of {deadline:g}s"
    return text


def _no_reply(timeout: float) -> typer.Exit:
    typer.echo(f"error: no worker replied within {timeout:g}s", err=True)
    return typer.Exit(1)


def _worker_rows(replies: dict[str, Any], command: str) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of an ``inspect`` reply table."""
    rows: list[list[str]] = []
    if command in ("active", "reserved", "scheduled"):
        columns = ["worker", "task id", "task", "args", "detail"]
        for worker, items in replies.items():
            if isinstance(items, dict):  # {"error": ...}
                rows.append([worker, "-", "-", "-", str(items.get("error"))])
                continue
            if not items:
                rows.append([worker, "-", f"(none {command})", "", ""])
            for item in items:
                request = item.get("request", item)
                if command == "active":
                    detail = _running(item)
                elif command == "scheduled":
                    detail = f"{item.get('reason')}, waiting {_ago(item.get('waiting_since'))}"
                else:
                    detail = f"queue {request.get('queue')}"
                args = _short([request.get("args"), request.get("kwargs")])
                rows.append(
                    [worker, str(request.get("id")), str(request.get("name")), args, detail]
                )
        return columns, rows
    if command == "stats":
        columns = ["worker", "pid", "concurrency", "processed", "active", "uptime", "queues"]
        for worker, s in replies.items():
            rows.append(
                [
                    worker,
                    str(s.get("pid")),
                    str(s.get("concurrency")),
                    str(s.get("processed")),
                    str(s.get("active")),
                    _duration(float(s.get("uptime") or 0)),
                    ",".join(s.get("queues") or []),
                ]
            )
        return columns, rows
    if command in ("registered", "revoked"):
        columns = ["worker", "count", command]
        for worker, items in replies.items():
            listed = items if isinstance(items, list) else [str(items)]
            rows.append([worker, str(len(listed)), "\n".join(str(i) for i in listed) or "-"])
        return columns, rows
    columns = ["worker", "reply"]
    for worker, value in replies.items():
        if isinstance(value, dict):
            text = str(value.get("error") or value.get("ok") or _short(value, 120))
        else:
            text = str(value)
        rows.append([worker, text])
    return columns, rows


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False)
    for column in columns:
        numeric = column in ("pid", "concurrency", "processed", "active", "count")
        numeric = numeric or column in ("ready", "delayed", "unacked", "dead", "consumers", "done")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _print_replies(command: str, replies: list[Reply], as_json: bool, timeout: float) -> None:
    if not replies:
        raise _no_reply(timeout)
    named = by_worker(replies)
    if as_json:
        _print_json(named)
        return
    columns, rows = _worker_rows(named, command)
    noun = "worker" if len(replies) == 1 else "workers"
    _print_table(f"{command}: {len(replies)} {noun} replied", columns, rows)


# -- the commands --------------------------------------------------------------------------------


def inspect(
    ctx: typer.Context,
    command: Annotated[InspectCommand, typer.Argument(help="What to ask the workers.")],
    app: AppOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    destination: DestinationOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask every live worker: active, registered, scheduled, reserved, stats, revoked, ping."""

    async def work(a: Aqueue) -> list[Reply]:
        return await a.control.broadcast(
            command.value, timeout=timeout, destination=split(destination)
        )

    _print_replies(command.value, run_with_app(app_spec(ctx, app), work), as_json, timeout)


def control(
    ctx: typer.Context,
    command: Annotated[ControlCommand, typer.Argument(help="What to tell the workers.")],
    app: AppOption = None,
    arguments: Annotated[
        list[str] | None,
        typer.Argument(help="revoke: task ids; rate_limit: TASK RATE; *_consumer: QUEUE."),
    ] = None,
    terminate: Annotated[
        bool, typer.Option("--terminate", help="revoke: also cancel the task if it is running.")
    ] = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    destination: DestinationOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tell the workers: ping, revoke ID..., rate_limit TASK RATE, shutdown, add/cancel_consumer."""
    args = list(arguments or [])
    expected = {"revoke": None, "rate_limit": 2, "add_consumer": 1, "cancel_consumer": 1}
    wanted = expected.get(command.value, 0)
    if (wanted is None and not args) or (wanted is not None and len(args) != wanted):
        usage = {
            "revoke": "revoke TASK_ID [TASK_ID...]",
            "rate_limit": "rate_limit TASK RATE (e.g. 10/m; 0 removes the limit)",
            "add_consumer": "add_consumer QUEUE",
            "cancel_consumer": "cancel_consumer QUEUE",
        }.get(command.value, command.value)
        typer.echo(f"error: usage: aqueue control -A APP {usage}", err=True)
        raise typer.Exit(2)
    dest = split(destination)

    async def work(a: Aqueue) -> list[Reply]:
        c = a.control
        if command is ControlCommand.revoke:
            if dest is not None:
                raise ConfigurationError("revoke applies to every worker; drop -d")
            return await c.revoke(args, terminate, reply=True, timeout=timeout)
        if command is ControlCommand.rate_limit:
            return await c.rate_limit(args[0], args[1], destination=dest, timeout=timeout)
        if command is ControlCommand.shutdown:
            return await c.shutdown(dest, timeout)
        if command is ControlCommand.add_consumer:
            return await c.add_consumer(args[0], dest, timeout)
        if command is ControlCommand.cancel_consumer:
            return await c.cancel_consumer(args[0], dest, timeout)
        return await c.ping(timeout, dest)

    replies = run_with_app(app_spec(ctx, app), work)
    if command is ControlCommand.revoke and not replies:
        # Stored all the same: workers that are down now honour it when they start.
        typer.echo(f"revoked {len(args)} task(s); no worker is running to acknowledge it now")
        return
    _print_replies(command.value, replies, as_json, timeout)


def status(
    ctx: typer.Context,
    app: AppOption = None,
    queues: QueuesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queues with their depths (ready, delayed, unacked, dead-lettered, consumers), live
    workers, and lost ones (stopped heartbeating without shutting down, in the last hour);
    ``-`` where the broker cannot count (RabbitMQ: see docs/amqp.md)."""
    from aqueue.control.queues import cluster_status

    result = run_with_app(app_spec(ctx, app), lambda a: cluster_status(a, split(queues)))
    if as_json:
        _print_json(result.as_dict())
        return
    counts = ("ready", "delayed", "unacked", "dead", "consumers")
    _print_table(
        "Queues",
        ["queue", *counts],
        [[d.queue, *(_count(getattr(d, c)) for c in counts)] for d in result.queues],
    )
    _print_table(
        f"Workers: {len(result.workers)} live",
        ["worker", "pid", "concurrency", "active", "done", "uptime", "queues"],
        [
            [
                w.hostname,
                str(w.pid),
                str(w.concurrency),
                str(w.active),
                str(w.processed),
                _duration(w.uptime),
                ",".join(w.queues),
            ]
            for w in result.workers
        ],
    )
    if result.lost:  # stopped heartbeating without shutting down
        _print_table(
            f"Workers: {len(result.lost)} lost (no heartbeat, not shut down)",
            ["worker", "pid", "last seen", "active then", "queues"],
            [
                [w.hostname, str(w.pid), f"{_duration(w.last_seen)} ago", str(w.active),
                 ",".join(w.queues)]
                for w in result.lost
            ],
        )  # fmt: skip


def _count(value: int | None) -> str:
    """A count for a table; ``-`` where the broker cannot give it."""
    return "-" if value is None else str(value)


def _queues_or_default(a: Aqueue, queues: str | None) -> list[str]:
    from aqueue.control.queues import app_queues

    return split(queues) or app_queues(a)


def purge(
    ctx: typer.Context,
    app: AppOption = None,
    queues: QueuesOption = None,
    force: ForceOption = False,
) -> None:
    """Delete the messages waiting in queues (default: the app's queues); asks first."""
    from aqueue.control.queues import purge as purge_queues
    from aqueue.transports.base import queue_admin

    spec = app_spec(ctx, app)

    async def count(a: Aqueue) -> tuple[list[str], int]:
        names = _queues_or_default(a, queues)
        depths = await queue_admin(await a.broker()).queue_depths(names)
        return names, sum(d.waiting for d in depths)

    names, waiting = run_with_app(spec, count)
    listed = ", ".join(names)
    if waiting == 0:
        typer.echo(f"No messages to purge in {listed}.")
        return
    if not force and not typer.confirm(f"Purge {waiting} message(s) from {listed}?"):
        raise typer.Exit(1)
    removed = run_with_app(spec, lambda a: purge_queues(a, names))
    typer.echo(f"Purged {removed} message(s) from {len(names)} queue(s) ({listed}).")


def dlq(
    ctx: typer.Context,
    command: Annotated[DlqCommand, typer.Argument(help="list | replay | purge")],
    app: AppOption = None,
    queues: QueuesOption = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=1, help="At most this many, oldest first."),
    ] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """The dead-letter queues: list them, replay them into their queues, or delete them."""
    from aqueue.control.queues import replay_dead_letters
    from aqueue.transports.base import queue_admin

    spec = app_spec(ctx, app)
    if command is DlqCommand.list:

        async def read(a: Aqueue) -> list[dict[str, Any]]:
            broker = await a.broker()
            out = []
            for name in _queues_or_default(a, queues):
                for letter in await broker.dead_letters(name, limit or 100):
                    out.append(_letter(letter.queue, letter.body, letter.reason, letter.time))
            return out

        letters = run_with_app(spec, read)
        if as_json:
            _print_json(letters)
        else:
            _print_table(
                f"Dead letters: {len(letters)}",
                ["queue", "task id", "task", "reason", "when"],
                [
                    [
                        d["queue"],
                        str(d["id"]),
                        str(d["task"]),
                        d["reason"],
                        _ago(d["time"]) + " ago",
                    ]
                    for d in letters
                ],
            )
        return

    async def count(a: Aqueue) -> tuple[list[str], int]:
        names = _queues_or_default(a, queues)
        depths = await queue_admin(await a.broker()).queue_depths(names)
        total = sum(d.dead for d in depths)
        return names, total if limit is None else min(total, limit * len(names))

    names, total = run_with_app(spec, count)
    listed = ", ".join(names)
    if total == 0:
        typer.echo(f"No dead letters in {listed}.")
        return
    verb = "Replay" if command is DlqCommand.replay else "Delete"
    if not force and not typer.confirm(f"{verb} {total} dead letter(s) of {listed}?"):
        raise typer.Exit(1)

    async def act(a: Aqueue) -> int:
        done = 0
        for name in names:
            if command is DlqCommand.replay:
                done += await replay_dead_letters(a, name, limit)
            else:
                done += await queue_admin(await a.broker()).purge_dead_letters(name, limit)
        return done

    done = run_with_app(spec, act)
    past = "Replayed" if command is DlqCommand.replay else "Deleted"
    typer.echo(f"{past} {done} dead letter(s) of {listed}.")


def _letter(queue: str, body: bytes, reason: str, when: float) -> dict[str, Any]:
    from aqueue.message import decode_envelope

    try:
        env = decode_envelope(body)
        task_id, task = env["id"], env["task"]
    except AqueueError:
        task_id, task = None, None
    return {"queue": queue, "id": task_id, "task": task, "reason": reason, "time": when}


def events(
    ctx: typer.Context,
    app: AppOption = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Stop after this many events.")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--timeout", "-t", callback=_check_seconds, help="Stop after this many seconds."
        ),
    ] = None,
) -> None:
    """Print the workers' events (start workers with -E) as JSON lines until Ctrl-C."""
    from aqueue.control.events import event_senders
    from aqueue.control.events import events as stream

    def ready() -> None:
        typer.echo("listening for events (Ctrl-C to stop)", err=True)

    async def listen(a: Aqueue) -> int:
        live, sending = await event_senders(a)
        if not live:
            typer.echo("no worker is running: events come from workers started with -E", err=True)
        elif not sending:
            typer.echo(
                f"{live} worker(s) running, none sends events: start workers with -E "
                "(or set worker_send_task_events = True); waiting for one that does",
                err=True,
            )
        seen = 0
        try:
            async with asyncio.timeout(duration):
                async for event in stream(a, on_ready=ready):
                    sys.stdout.write(orjson.dumps(event, default=repr).decode() + "\n")
                    sys.stdout.flush()
                    seen += 1
                    if limit is not None and seen >= limit:
                        break
        except TimeoutError:
            pass
        return seen

    with contextlib.suppress(KeyboardInterrupt):
        run_with_app(app_spec(ctx, app), listen)


#: The operations commands, in the order ``aqueue --help`` lists them.
COMMANDS = (inspect, control, status, purge, dlq, events)
