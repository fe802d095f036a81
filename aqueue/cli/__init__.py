"""The ``aqueue`` command line: ``worker``, ``beat`` (see :mod:`aqueue.cli.beat`), ``call``,
``--version``.

``-A`` takes ``module`` or ``module:attribute``; with a module alone, the one :class:`Aqueue`
instance in it is used, as Celery's ``-A`` does. The current directory is importable.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated, Any

import orjson
import typer

from aqueue import __version__
from aqueue.app import Aqueue
from aqueue.cli import loop as aqueue_loop
from aqueue.cli.beat import beat_cli
from aqueue.cli.ops import register as register_operations
from aqueue.exceptions import AqueueError, ConfigurationError

cli = typer.Typer(
    name="aqueue",
    help="aqueue: an asyncio-native distributed task queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.add_typer(beat_cli, name="beat")

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
AppOption = Annotated[
    str, typer.Option("-A", "--app", help="The app: 'module' or 'module:attribute'.")
]


def load_app(spec: str) -> Aqueue:
    """Import the app named by ``spec`` (``module`` or ``module:attribute``).

    Raises:
        ConfigurationError: the module cannot be imported, the attribute is missing or is not
            an Aqueue, or a module alone holds no Aqueue or several; the message says what was
            tried.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"-A {spec}: cannot import module {module_name!r} ({exc}); tried from {os.getcwd()} "
            f"and sys.path - run from the directory that contains it or give a dotted path"
        ) from exc
    if attr:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if not isinstance(obj, Aqueue):
            raise ConfigurationError(
                f"-A {spec}: {module_name}.{attr} is {'missing' if obj is None else type(obj)}, "
                f"not an Aqueue app"
            )
        return obj
    apps = {id(v): (k, v) for k, v in vars(module).items() if isinstance(v, Aqueue)}
    if len(apps) == 1:
        return next(iter(apps.values()))[1]
    if not apps:
        raise ConfigurationError(
            f"-A {spec}: module {module_name!r} has no Aqueue app; define one "
            f"(app = Aqueue(...)) or name it as -A {module_name}:attribute"
        )
    names = ", ".join(sorted(k for k, _ in apps.values()))
    raise ConfigurationError(
        f"-A {spec}: module {module_name!r} has several Aqueue apps ({names}); "
        f"choose one with -A {module_name}:NAME"
    )


def _fail(exc: AqueueError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aqueue {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """aqueue: an asyncio-native distributed task queue."""


@cli.command()
def worker(
    app: AppOption,
    concurrency: Annotated[
        int | None, typer.Option("-c", "--concurrency", help="Tasks in flight at once.")
    ] = None,
    queues: Annotated[
        str | None, typer.Option("-Q", "--queues", help="Comma-separated queues to consume.")
    ] = None,
    loglevel: Annotated[str, typer.Option("-l", "--loglevel", help="debug|info|warning|error")] = (
        "info"
    ),
    hostname: Annotated[
        str | None, typer.Option("-n", "--hostname", help="This worker's name.")
    ] = None,
    prefetch_multiplier: Annotated[
        int | None, typer.Option("--prefetch-multiplier", help="Messages held per slot.")
    ] = None,
    beat: Annotated[
        bool, typer.Option("-B", "--beat", help="Also run beat (periodic tasks) in this process.")
    ] = False,
    events: Annotated[
        bool, typer.Option("-E", "--events", help="Send task events (see aqueue events).")
    ] = False,
    processes: Annotated[
        int, typer.Option("--processes", min=1, help="Worker processes, under a supervisor.")
    ] = 1,
) -> None:
    """Run a worker: consume the queues and run tasks until SIGTERM or SIGINT."""
    from aqueue.beat import Beat
    from aqueue.cli.beat import run_worker_with_beat
    from aqueue.worker import Worker

    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    if processes > 1:  # N copies of this command, without --processes (aqueue.worker.supervisor)
        from aqueue.cli.ops import supervise

        supervise(app, processes, concurrency, queues, loglevel, hostname,
                  prefetch_multiplier, beat, events)  # fmt: skip
    try:
        the_app = load_app(app)
        queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        w = Worker(the_app, queue_list, concurrency, prefetch_multiplier, hostname,
                   send_events=events or None)  # fmt: skip
        b = Beat(the_app) if beat else None
    except AqueueError as exc:
        raise _fail(exc) from exc

    async def main() -> None:
        try:
            if b is not None:
                await run_worker_with_beat(w, b)
            else:
                await w.run(install_signal_handlers=True)
        finally:
            await the_app.close()

    try:
        aqueue_loop.run(main())
    except AqueueError as exc:
        raise _fail(exc) from exc


@cli.command()
def call(
    app: AppOption,
    name: Annotated[str, typer.Argument(help="The task's registered name.")],
    args: Annotated[str, typer.Option("--args", "-a", help="Positional args, a JSON list.")] = (
        "[]"
    ),
    kwargs: Annotated[
        str, typer.Option("--kwargs", "-k", help="Keyword args, a JSON object.")
    ] = "{}",
    queue: Annotated[str | None, typer.Option("--queue", "-Q", help="Target queue.")] = None,
    countdown: Annotated[
        float | None, typer.Option("--countdown", help="Seconds to wait before running.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it.")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait with --wait.")
    ] = None,
) -> None:
    """Send a task by name; print its id, or with --wait its result as JSON (progress: stderr)."""
    from aqueue.cli.ops import ProgressPrinter

    try:
        the_app = load_app(app)
        call_args = orjson.loads(args)
        call_kwargs = orjson.loads(kwargs)
    except orjson.JSONDecodeError as exc:
        typer.echo(f"error: --args must be a JSON list and --kwargs a JSON object: {exc}", err=True)
        raise typer.Exit(2) from exc
    except AqueueError as exc:
        raise _fail(exc) from exc
    if not isinstance(call_args, list) or not isinstance(call_kwargs, dict):
        typer.echo("error: --args must be a JSON list and --kwargs a JSON object", err=True)
        raise typer.Exit(2)
    options: dict[str, Any] = {}
    if queue:
        options["queue"] = queue
    if countdown is not None:
        options["countdown"] = countdown

    async def main() -> int:
        try:
            r = await the_app.send_task(name, call_args, call_kwargs, **options)
            if not wait:
                typer.echo(r.id)
                return 0
            try:
                with ProgressPrinter(r.id) as show:  # a custom state's {"current", "total"}
                    value = await r.get(timeout=timeout, on_message=show)
            except AqueueError:
                raise
            except Exception as exc:
                typer.echo(f"task {r.id} failed: {type(exc).__name__}: {exc}", err=True)
                return 1
            typer.echo(orjson.dumps(value, default=repr).decode())
            return 0
        finally:
            await the_app.close()

    try:
        code = aqueue_loop.run(main())
    except AqueueError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code)


register_operations(cli)  # inspect, control, status, purge, dlq, events


def main() -> None:
    """Entry point of the ``aqueue`` script."""
    cli()
