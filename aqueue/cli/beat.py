"""``aqueue beat``: run beat, or add, remove and list stored entries; and ``worker -B``'s glue.

::

    aqueue beat -A proj.tasks                       # run beat until SIGTERM/SIGINT
    aqueue beat add -A proj.tasks NAME --task proj.tasks.add --every 30 --args '[16, 16]'
    aqueue beat add -A proj.tasks NAME --task proj.tasks.report --cron '30 7 * * 1'
    aqueue beat remove -A proj.tasks NAME
    aqueue beat list -A proj.tasks

``-A`` may also come before the subcommand (``aqueue beat -A proj.tasks list``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
import typer

from aqueue.beat.schedules import Interval, Schedule, crontab
from aqueue.cli import loop as aqueue_loop
from aqueue.exceptions import AqueueError, ConfigurationError

if TYPE_CHECKING:
    from aqueue.app import Aqueue
    from aqueue.beat.entry import Entry
    from aqueue.beat.scheduler import Beat
    from aqueue.worker import Worker

__all__ = ["beat_cli", "run_worker_with_beat"]

T = TypeVar("T")

beat_cli = typer.Typer(
    help="Run beat (periodic tasks); or add, remove and list entries stored at runtime.",
    invoke_without_command=True,
    no_args_is_help=False,
)

OptionalApp = Annotated[
    str | None, typer.Option("-A", "--app", help="The app: 'module' or 'module:attribute'.")
]


async def run_worker_with_beat(worker: Worker, beat: Beat) -> None:
    """Run ``beat`` in the worker's event loop (``aqueue worker -B``) until the worker stops.

    Beat starts first, so a store it cannot reach fails the command before any task is taken;
    the worker's SIGTERM/SIGINT handling then stops both.

    Raises:
        BrokerConnectionError: the store or the broker cannot be reached at start.
    """
    await beat.start()
    try:
        await worker.run(install_signal_handlers=True)
    finally:
        await beat.stop()


def _load(spec: str | None, ctx: typer.Context) -> Aqueue:
    from aqueue.cli import _fail, load_app

    spec = spec or (ctx.obj if isinstance(ctx.obj, str) else None)
    if not spec:
        typer.echo("error: -A/--app is required, e.g. aqueue beat -A proj.tasks", err=True)
        raise typer.Exit(2)
    try:
        return load_app(spec)
    except AqueueError as exc:
        raise _fail(exc) from exc


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    from aqueue.cli import _fail

    try:
        return aqueue_loop.run(main())
    except AqueueError as exc:
        raise _fail(exc) from exc


@beat_cli.callback()
def beat(
    ctx: typer.Context,
    app: OptionalApp = None,
    loglevel: Annotated[str, typer.Option("-l", "--loglevel", help="debug|info|warning|error")] = (
        "info"
    ),
    max_interval: Annotated[
        float, typer.Option("--max-interval", help="Seconds between reads of stored entries.")
    ] = 1.0,
) -> None:
    """Run beat: send the periodic tasks until SIGTERM or SIGINT (any number may run at once)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = app
        return
    from aqueue.beat.scheduler import Beat
    from aqueue.cli import LOG_FORMAT, _fail

    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    the_app = _load(app, ctx)
    try:
        b = Beat(the_app, max_interval=max_interval)
    except AqueueError as exc:
        raise _fail(exc) from exc

    async def main() -> None:
        try:
            await b.run(install_signal_handlers=True)
        finally:
            await the_app.close()

    _run(main)


def _json(text: str, what: str, kind: type) -> Any:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        typer.echo(f"error: {what} must be JSON: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not isinstance(value, kind):
        typer.echo(f"error: {what} must be a JSON {kind.__name__}", err=True)
        raise typer.Exit(2)
    return value


@beat_cli.command()
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The entry's name.")],
    task: Annotated[str, typer.Option("--task", "-t", help="The task's registered name.")],
    app: OptionalApp = None,
    every: Annotated[
        float | None, typer.Option("--every", help="Interval schedule, in seconds.")
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help="Cron schedule: 'min hour dom month dow'.")
    ] = None,
    args: Annotated[str, typer.Option("--args", "-a", help="Positional args, a JSON list.")] = (
        "[]"
    ),
    kwargs: Annotated[
        str, typer.Option("--kwargs", "-k", help="Keyword args, a JSON object.")
    ] = "{}",
    options: Annotated[
        str, typer.Option("--options", help="apply_async options, a JSON object.")
    ] = "{}",
    catch_up: Annotated[
        str, typer.Option("--catch-up", help="Missed ticks: once | all | none.")
    ] = "once",
) -> None:
    """Add (or replace) a stored entry; running beats pick it up within a second."""
    if (every is None) == (cron is None):
        typer.echo(
            "error: give exactly one of --every SECONDS or --cron 'm h dom mon dow'", err=True
        )
        raise typer.Exit(2)
    call_args = _json(args, "--args", list)
    call_kwargs = _json(kwargs, "--kwargs", dict)
    call_options = _json(options, "--options", dict)
    the_app = _load(app, ctx)

    async def main() -> None:
        try:
            schedule: Schedule = (
                Interval(every) if every is not None else crontab.from_string(cron or "")
            )
            entry = await the_app.beat.add(
                name,
                task=task,
                schedule=schedule,
                args=call_args,
                kwargs=call_kwargs,
                options=call_options,
                catch_up=catch_up,
            )
        finally:
            await the_app.close()
        typer.echo(f"added {entry.name}: {entry.task} {describe(entry.schedule)}")

    _run(main)


@beat_cli.command()
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The stored entry's name.")],
    app: OptionalApp = None,
) -> None:
    """Remove a stored entry; running beats stop sending it within a second."""
    the_app = _load(app, ctx)

    async def main() -> bool:
        try:
            return await the_app.beat.remove(name)
        finally:
            await the_app.close()

    if not _run(main):
        typer.echo(f"error: no stored entry named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed {name}")


@beat_cli.command("list")
def list_entries(ctx: typer.Context, app: OptionalApp = None) -> None:
    """List every entry: name, task, schedule, where it is defined, last and next run."""
    the_app = _load(app, ctx)

    async def main() -> list[Entry]:
        try:
            return await the_app.beat.list()
        finally:
            await the_app.close()

    entries = _run(main)
    tz = ZoneInfo(the_app.conf.timezone)
    now = time.time()
    for e in entries:
        last = "never" if e.last_run is None else _iso(e.last_run, tz)
        start = max(t for t in (now, e.since, e.last_run) if t is not None)
        try:
            upcoming = _iso(e.schedule.next_tick(start, tz), tz)
        except ConfigurationError:
            upcoming = "never"
        source = "stored" if e.dynamic else "code"
        typer.echo(
            f"{e.name}\t{e.task}\t{describe(e.schedule)}\t{source}\tlast {last}\tnext {upcoming}"
        )


def describe(schedule: Schedule) -> str:
    """A schedule in words: ``every 30s`` or ``cron '30 7 * * 1'``."""
    if isinstance(schedule, Interval):
        return f"every {schedule.seconds:g}s"
    if isinstance(schedule, crontab):
        return f"cron '{schedule.expression}'"
    return repr(schedule)


def _iso(t: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).isoformat(timespec="seconds")
