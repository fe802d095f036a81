"""``aqueue call``: send a task by name; print its id, or with ``--wait`` its result.

::

    aqueue call -A proj.tasks proj.tasks.add --args '[2, 2]' [--kwargs '{}'] [--wait]

The name must be registered by the ``-A`` app (close names are suggested), unless the app
registers no tasks of its own (a sending-only app) or ``--no-check`` is given (a task only the
workers import).
"""

from __future__ import annotations

import difflib
import sys
from typing import Annotated, Any

import orjson
import typer

from aqueue import Aqueue, AsyncResult
from aqueue.cli._common import app_spec, fail, load_app, run
from aqueue.cli.options import AppOption
from aqueue.exceptions import AqueueError, TaskNotRegistered

__all__ = ["ProgressPrinter", "call", "check_task_name", "close_names"]

#: Builtin tasks (``aqueue.map``...) are callable but never suggested, as Celery hides
#: ``celery.*`` from its banner.
_BUILTIN_PREFIX = "aqueue."
_LISTED = 10  # registered names shown when none is close


def call(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The task's registered name.")],
    app: AppOption = None,
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
    no_check: Annotated[
        bool,
        typer.Option("--no-check", help="Send even if the -A app does not register the name."),
    ] = False,
) -> None:
    """Send a task by name; print its id, or with --wait its result as JSON (progress: stderr)."""
    spec = app_spec(ctx, app)
    try:
        the_app = load_app(spec)
        if not no_check:
            check_task_name(the_app, name, spec)
    except AqueueError as exc:
        raise fail(exc) from exc
    call_args, call_kwargs = _arguments(args, kwargs)
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
            return await _print_result(r, timeout)
        finally:
            await the_app.close()

    raise typer.Exit(run(main()))


def _arguments(args: str, kwargs: str) -> tuple[list[Any], dict[str, Any]]:
    """``--args`` and ``--kwargs`` decoded; a bad one exits with code 2."""
    try:
        call_args = orjson.loads(args)
        call_kwargs = orjson.loads(kwargs)
    except orjson.JSONDecodeError as exc:
        typer.echo(f"error: --args must be a JSON list and --kwargs a JSON object: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not isinstance(call_args, list) or not isinstance(call_kwargs, dict):
        typer.echo("error: --args must be a JSON list and --kwargs a JSON object", err=True)
        raise typer.Exit(2)
    return call_args, call_kwargs


async def _print_result(r: AsyncResult[Any], timeout: float | None) -> int:
    """Wait for the result (showing progress on stderr) and print it as JSON; 1 if it failed.

    Raises:
        AqueueError: waiting failed (a timeout, the backend unreachable); the task's own
            failure is printed instead.
    """
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


def check_task_name(app: Aqueue, name: str, spec: str) -> None:
    """Refuse ``name`` if ``app`` registers tasks of its own and not this one.

    Raises:
        TaskNotRegistered: with the close names, else the registered ones.
    """
    own = sorted(n for n in app.tasks if not n.startswith(_BUILTIN_PREFIX))
    if name in app.tasks or not own:
        return
    close = close_names(name, own)
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    else:
        more = f" and {len(own) - _LISTED} more" if len(own) > _LISTED else ""
        hint = f"registered: {', '.join(own[:_LISTED])}{more}"
    raise TaskNotRegistered(
        f"unknown task {name!r}: -A {spec} does not register it; {hint} "
        f"(--no-check sends it anyway, for a task only the workers import)"
    )


def close_names(name: str, names: list[str]) -> list[str]:
    """The names in ``names`` that ``name`` was probably meant to be: those whose last part is
    spelled like ``name``'s (``add`` or ``ad`` for ``proj.tasks.add``); failing that, the
    nearest spellings of the whole name (``proj.taks.mul``)."""
    by_end: dict[str, list[str]] = {}
    for n in names:
        by_end.setdefault(n.rpartition(".")[2], []).append(n)
    ends = difflib.get_close_matches(name.rpartition(".")[2], list(by_end), n=5, cutoff=0.6)
    if ends:
        return [n for end in ends for n in by_end[end]][:5]
    return difflib.get_close_matches(name, names, n=5, cutoff=0.6)


class ProgressPrinter:
    """Shows a task's progress while ``aqueue call --wait`` waits: a rich progress bar on a
    terminal, plain ``progress: 30/100 (30%)`` lines on stderr otherwise.

    Fed by ``AsyncResult.get(on_message=...)``: a custom state whose meta holds ``current`` and
    ``total`` (e.g. ``update_state(state="PROGRESS", meta={"current": 30, "total": 100})``)
    moves the bar; other states are shown by name. Use as a context manager.
    """

    def __init__(self, task_id: str, interactive: bool | None = None) -> None:
        from rich.console import Console  # rich loads in 50 ms: only when waiting
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.task_id = task_id
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar = self._progress.add_task(task_id[:8], total=None)
        self._last: tuple[Any, Any] | None = None

    def __enter__(self) -> ProgressPrinter:
        if self.interactive:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.interactive:
            self._progress.stop()

    def __call__(self, message: dict[str, Any]) -> None:
        status, meta = message.get("status"), message.get("result")
        if (status, meta) == self._last:
            return
        self._last = (status, meta)
        current = meta.get("current") if isinstance(meta, dict) else None
        total = meta.get("total") if isinstance(meta, dict) else None
        if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
            self._show_fraction(str(status), current, total)
        elif self.interactive:
            self._progress.update(self._bar, description=str(status))
        else:
            typer.echo(f"state: {status}", err=True)

    def _show_fraction(self, status: str, current: float, total: float) -> None:
        if self.interactive:
            self._progress.update(self._bar, completed=current, total=total, description=status)
        else:
            percent = 100 * current / total
            typer.echo(f"progress: {current:g}/{total:g} ({percent:.0f}%)", err=True)
