"""``aqueue beat``: run beat, or add, remove and list stored entries.

::

    aqueue beat -A proj.tasks [--logfile PATH] [--pidfile PATH]   # run beat until SIGTERM/SIGINT
    aqueue beat add -A proj.tasks NAME --task proj.tasks.add --every 30 --args '[16, 16]'
    aqueue beat add -A proj.tasks NAME --task proj.tasks.report --cron '30 7 * * 1'
    aqueue beat remove -A proj.tasks NAME
    aqueue beat list -A proj.tasks

``-A`` may also come before the subcommand (``aqueue beat -A proj.tasks list``) or before
``beat`` (``aqueue -A proj.tasks beat list``). ``aqueue worker -B`` runs beat inside a worker
(:mod:`aqueue.cli.worker`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
import typer

from aqueue.app import Aqueue
from aqueue.beat.entry import Entry
from aqueue.beat.scheduler import Beat
from aqueue.beat.schedules import Interval, Schedule, crontab
from aqueue.cli._common import (
    app_spec,
    fail,
    load,
    remember_app,
    run,
    run_with_app,
    setup_logging,
    use_log_format,
)
from aqueue.cli.options import (
    AppOption,
    LogfileOption,
    LogFormatOption,
    LoglevelOption,
    PidfileOption,
)
from aqueue.cli.pidfile import hold_pidfile
from aqueue.exceptions import AqueueError, ConfigurationError

__all__ = ["beat", "commands", "describe", "run_beat"]

commands = typer.Typer(
    help="Run beat (periodic tasks); or add, remove and list entries stored at runtime.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@commands.callback()
def beat(
    ctx: typer.Context,
    app: AppOption = None,
    loglevel: LoglevelOption = "info",
    max_interval: Annotated[
        float, typer.Option("--max-interval", help="Seconds between reads of stored entries.")
    ] = 1.0,
    logfile: LogfileOption = None,
    log_format: LogFormatOption = None,
    pidfile: PidfileOption = None,
) -> None:
    """Run beat: send the periodic tasks until SIGTERM or SIGINT (any number may run at once)."""
    if ctx.invoked_subcommand is not None:
        remember_app(ctx, app)
        return
    use_log_format(log_format)
    the_app = load(ctx, app)  # first: a setup_logging receiver in the app takes over logging
    setup_logging(loglevel, logfile)
    with hold_pidfile(pidfile):
        run_beat(the_app, max_interval)


def run_beat(app: Aqueue, max_interval: float) -> None:
    """Run beat for ``app`` until SIGTERM or SIGINT, then close the app.

    Raises:
        typer.Exit: (code 2) beat's schedule does not fit, or its store cannot be reached.
    """
    try:
        b = Beat(app, max_interval=max_interval)
    except AqueueError as exc:
        raise fail(exc) from exc

    async def main() -> None:
        try:
            await b.run(install_signal_handlers=True)
        finally:
            await app.close()

    run(main())


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


@commands.command()
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The entry's name.")],
    task: Annotated[str, typer.Option("--task", "-t", help="The task's registered name.")],
    app: AppOption = None,
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

    async def work(the_app: Aqueue) -> Entry:
        schedule: Schedule = (
            Interval(every) if every is not None else crontab.from_string(cron or "")
        )
        return await the_app.beat.add(
            name,
            task=task,
            schedule=schedule,
            args=call_args,
            kwargs=call_kwargs,
            options=call_options,
            catch_up=catch_up,
        )

    entry = run_with_app(app_spec(ctx, app), work)
    typer.echo(f"added {entry.name}: {entry.task} {describe(entry.schedule)}")


@commands.command()
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The stored entry's name.")],
    app: AppOption = None,
) -> None:
    """Remove a stored entry; running beats stop sending it within a second."""

    async def work(the_app: Aqueue) -> bool:
        return await the_app.beat.remove(name)

    if not run_with_app(app_spec(ctx, app), work):
        typer.echo(f"error: no stored entry named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed {name}")


@commands.command("list")
def list_entries(ctx: typer.Context, app: AppOption = None) -> None:
    """List every entry: name, task, schedule, where it is defined, last and next run."""

    async def work(the_app: Aqueue) -> tuple[list[Entry], str]:
        return await the_app.beat.list(), the_app.conf.timezone

    entries, timezone = run_with_app(app_spec(ctx, app), work)
    tz = ZoneInfo(timezone)
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
