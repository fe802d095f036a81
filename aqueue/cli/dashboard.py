"""``aqueue dashboard -A proj [--port 5555] [--address 127.0.0.1]``: serve the web dashboard
(:mod:`aqueue.dashboard`, the ``dashboard`` extra) with uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from aqueue.cli._common import load, setup_logging
from aqueue.cli.options import AppOption, LoglevelOption

__all__ = ["dashboard"]

TOKEN_ENV = "AQUEUE_DASHBOARD_TOKEN"
BASIC_ENV = "AQUEUE_DASHBOARD_BASIC_AUTH"


def _basic(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        typer.echo("error: --basic-auth takes USER:PASSWORD", err=True)
        raise typer.Exit(2)
    return user, password


def dashboard(
    ctx: typer.Context,
    app: AppOption = None,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="The port.")] = 5555,
    address: Annotated[
        str, typer.Option("--address", help="The address to listen on (loopback by default).")
    ] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=f"Require this bearer token (browsers sign in once). [env: {TOKEN_ENV}]",
        ),
    ] = None,
    basic_auth: Annotated[
        str | None,
        typer.Option("--basic-auth", help=f"Require USER:PASSWORD. [env: {BASIC_ENV}]"),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Show everything, allow no action.")
    ] = False,
    max_tasks: Annotated[
        int, typer.Option("--max-tasks", min=100, help="Task records kept in the history.")
    ] = 100_000,
    max_age: Annotated[
        float, typer.Option("--max-age", min=60, help="Seconds a task record is kept.")
    ] = 86_400.0,
    loglevel: LoglevelOption = "INFO",
) -> None:
    """Serve the web dashboard: workers, tasks, workflows, queues, dead letters and beat, live.

    Without --token or --basic-auth only loopback clients are served, so an address other than
    loopback needs one of them. Workers must run with -E for tasks to show.
    """
    try:
        import uvicorn

        from aqueue.dashboard import Dashboard
        from aqueue.dashboard.access import is_loopback
    except ImportError as exc:
        typer.echo(
            f"error: the dashboard needs its extra: pip install 'aqueue[dashboard]' ({exc})",
            err=True,
        )
        raise typer.Exit(2) from exc
    token = token or os.environ.get(TOKEN_ENV) or None
    basic = _basic(basic_auth or os.environ.get(BASIC_ENV))
    if not token and not basic and not is_loopback(address):
        typer.echo(
            f"error: --address {address} is not loopback: set --token or --basic-auth "
            "(without them the dashboard serves loopback clients only)",
            err=True,
        )
        raise typer.Exit(2)
    setup_logging(loglevel)
    the_app = load(ctx, app)
    web = Dashboard(
        the_app,
        token=token,
        basic_auth=basic,
        read_only=read_only,
        max_tasks=max_tasks,
        max_age=max_age,
    )
    shown = f"[{address}]" if ":" in address else address
    typer.echo(f"aqueue dashboard of {the_app.main} on http://{shown}:{port}/", err=True)
    uvicorn.run(
        web,
        host=address,
        port=port,
        log_level=loglevel.lower(),
        timeout_graceful_shutdown=2,
        access_log=False,
    )
