"""The ``aqueue`` command line: the commands of each module, assembled into one typer app.

=================  ==============================================================
``worker``         :mod:`aqueue.cli.worker` (with ``-B`` and ``--processes``)
``beat``           :mod:`aqueue.cli.beat` (run beat; ``add``/``remove``/``list``)
``call``           :mod:`aqueue.cli.call`
``inspect`` ...    :mod:`aqueue.cli.ops`: ``control``, ``status``, ``purge``, ``dlq``, ``events``
``dashboard``      :mod:`aqueue.cli.dashboard` (the ``dashboard`` extra)
=================  ==============================================================

What they share (``-A``, logging, errors, the event loop) is in :mod:`aqueue.cli._common`;
``-A`` may come before the command, as with Celery (``aqueue -A proj worker``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from aqueue import __version__
from aqueue.cli import beat, call, dashboard, ops, worker
from aqueue.cli._common import load_app, remember_app

__all__ = ["cli", "load_app", "main"]

cli = typer.Typer(
    name="aqueue",
    help="aqueue: an asyncio-native distributed task queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aqueue {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    ctx: typer.Context,
    app: Annotated[
        str | None,
        typer.Option("-A", "--app", help="The app of the command: 'module' or 'module:attribute'."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """aqueue: an asyncio-native distributed task queue."""
    remember_app(ctx, app)


cli.command()(worker.worker)
cli.add_typer(beat.commands, name="beat")
cli.command()(call.call)
for command in ops.COMMANDS:  # inspect, control, status, purge, dlq, events
    cli.command()(command)
cli.command()(dashboard.dashboard)


def main() -> None:
    """Entry point of the ``aqueue`` script."""
    cli()
