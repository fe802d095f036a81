"""Celery's task options, ``apply_async`` options, commands and signals, each with aqueue's
equivalent or the reason there is none: the tables of the "Coming from Celery" page.

What aqueue has is read from the code (:class:`aqueue.sending.options.TaskOptions` and
``SendOptions``, the typer app, :mod:`aqueue.signals`); only the reasons for what it lacks are
written here. A name given a reason that aqueue has, or a Celery name aqueue lacks without a
reason, fails the build, so the tables follow the code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

#: Celery task options (``@app.task(...)``, Celery 5's "Task options") -> the reason aqueue has
#: none (``None``: aqueue has it, under the same name).
TASK_OPTIONS: dict[str, str | None] = {
    "name": None,
    "bind": None,
    "base": None,
    "typing": None,
    "max_retries": None,
    "default_retry_delay": None,
    "rate_limit": None,
    "time_limit": None,
    "soft_time_limit": None,
    "ignore_result": None,
    "serializer": None,
    "compression": None,
    "acks_late": None,
    "track_started": None,
    "autoretry_for": None,
    "retry_kwargs": None,
    "retry_backoff": None,
    "retry_backoff_max": None,
    "retry_jitter": None,
    "reject_on_worker_lost": None,
    "expires": None,
    "priority": None,
    "queue": None,
    "throws": "no equivalent: every failure is logged with its traceback and stored",
    "dont_autoretry_for": "list only the types to retry in autoretry_for",
    "store_errors_even_if_ignored": "no equivalent: with ignore_result nothing is stored",
    "acks_on_failure_or_timeout": (
        "a failed or timed-out task is always acked after its FAILURE is stored; a task whose "
        "worker died is delivered again (task_max_deliveries caps poison messages)"
    ),
    "backend": "one result backend per app (Aqueue(backend=...))",
    "trail": "no equivalent: a result does not list the tasks its task started",
    "send_events": "per worker: aqueue worker -E (worker_send_task_events)",
    "resultrepr_maxsize": "no equivalent",
    "pydantic": (
        "no option: arguments are checked against the function's signature at send (typing), "
        "and dataclasses and registered types travel as themselves (register_type)"
    ),
    "abstract": "subclass aqueue.Task and pass it as base=: only decorated functions are tasks",
}

#: Celery ``apply_async`` options -> the reason aqueue has none (``None``: same name).
SEND_OPTIONS: dict[str, str | None] = {
    "countdown": None,
    "eta": None,
    "expires": None,
    "retry": None,
    "retry_policy": None,
    "queue": None,
    "exchange": None,
    "routing_key": None,
    "priority": None,
    "serializer": None,
    "compression": None,
    "link": None,
    "link_error": None,
    "shadow": None,
    "headers": None,
    "task_id": None,
    "ignore_result": None,
    "time_limit": None,
    "group_id": None,
    "parent_id": None,
    "root_id": None,
    "soft_time_limit": "a task option only: @app.task(soft_time_limit=...)",
    "producer": "the app holds one connection per server and event loop: nothing to pass",
    "connection": "the app holds one connection per server and event loop: nothing to pass",
    "publisher": "the app holds one connection per server and event loop: nothing to pass",
    "add_to_parent": "no equivalent: a result does not list the tasks its task started",
    "reply_to": "set by the rpc:// result backend itself",
    "chord": "build chords with chord(header, body) or a chain holding a group",
    "stamped_headers": "no stamping: pass headers={...}",
}

#: Celery's ``celery`` commands -> the reason aqueue has no command of that name.
COMMANDS: dict[str, str | None] = {
    "worker": None,
    "beat": None,
    "call": None,
    "inspect": None,
    "control": None,
    "status": None,
    "purge": None,
    "events": None,
    "result": (
        "aqueue call --wait prints the result of what it sends; app.AsyncResult(id) reads any"
    ),
    "migrate": "no command: a broker's messages are not moved to another broker",
    "graph": "the dashboard (aqueue dashboard) draws canvas workflows as graphs",
    "list": "AMQP bindings come from task_queues; rabbitmqctl list_bindings shows them",
    "logtool": "logs are Python logging; --log-format json writes one object per line",
    "amqp": "use rabbitmqctl or redis-cli; aqueue dlq and purge cover aqueue's own queues",
    "multi": "aqueue worker --processes N supervises N processes; systemd units on each host",
    "shell": "python -m asyncio, then from proj import app",
    "upgrade": "no command: Celery 3's setting names are told their new name when set",
    "report": "aqueue status (queues, depths, workers) and aqueue --version",
}

#: What Celery's ``flower`` is to aqueue (not a ``celery`` command, but the same question).
EXTRA_COMMANDS = {"flower": "aqueue dashboard (the dashboard extra)"}

#: Celery's signals -> the reason aqueue does not send one of that name.
SIGNALS: dict[str, str | None] = {
    "before_task_publish": None,
    "after_task_publish": None,
    "task_prerun": None,
    "task_postrun": None,
    "task_retry": None,
    "task_success": None,
    "task_failure": None,
    "task_received": None,
    "task_revoked": None,
    "task_unknown": None,
    "task_rejected": None,
    "worker_init": None,
    "worker_ready": None,
    "worker_shutting_down": None,
    "worker_process_init": None,
    "worker_shutdown": None,
    "beat_init": None,
    "setup_logging": None,
    "task_internal_error": "no signal: an error in the worker's own code is logged",
    "import_modules": "task modules are imported with include= / autodiscover_tasks()",
    "celeryd_init": "use worker_init",
    "celeryd_after_setup": "use worker_init",
    "worker_before_create_process": (
        "no process pool: worker_process_init is sent in each child of --processes N once started"
    ),
    "worker_process_shutdown": "use worker_shutdown, sent by each worker process as it stops",
    "heartbeat_sent": "no signal: aqueue events shows worker heartbeats",
    "beat_embedded_init": "beat_init (also sent by worker -B)",
    "after_setup_logger": "setup_logging; or configure the logging module after it",
    "after_setup_task_logger": "the task's name and id are on every log line written in a task",
    "user_preload_options": "no preload options: the aqueue command's options are fixed",
    "eventlet_pool_started": "no eventlet pool: tasks are coroutines",
    "eventlet_pool_preshutdown": "no eventlet pool: tasks are coroutines",
    "eventlet_pool_postshutdown": "no eventlet pool: tasks are coroutines",
    "eventlet_pool_apply": "no eventlet pool: tasks are coroutines",
}


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def table(
    kind: str,
    celery: dict[str, str | None],
    ours: Iterable[str],
    ours_format: Callable[[str], str] = lambda n: f"`{n}`",
    note: Callable[[str], str] = lambda n: "",
) -> str:
    """A Markdown table of ``celery``'s names against ``ours`` (what aqueue has).

    Raises:
        ValueError: a name has a reason though aqueue has it, or lacks one though aqueue
            does not; the message lists them.
    """
    have = set(ours)
    stale = sorted(n for n, reason in celery.items() if reason is not None and n in have)
    unexplained = sorted(n for n, reason in celery.items() if reason is None and n not in have)
    if stale or unexplained:
        raise ValueError(
            f"Celery {kind} map out of date: aqueue now has {stale}; aqueue lacks {unexplained} "
            "(docs/hooks/celery_map.py)"
        )
    lines = [f"| Celery {kind} | aqueue | Notes |", "|---|---|---|"]
    for name, reason in celery.items():
        if reason is None:
            lines.append(f"| `{name}` | {ours_format(name)} | {cell(note(name))} |")
        else:
            lines.append(f"| `{name}` | none | {cell(reason)} |")
    extra = sorted(have - set(celery))
    if extra:
        names = ", ".join(f"`{n}`" for n in extra)
        lines.append(f"\naqueue's own, which Celery has not: {names}.")
    return "\n".join(lines)


def _typed_dict_keys(kind: Any) -> list[str]:
    return list(kind.__annotations__)


def task_options() -> str:
    """Celery's task options against :class:`aqueue.sending.options.TaskOptions` (plus the
    decorator's ``name``, ``bind`` and ``base``)."""
    from aqueue.sending.options import TaskOptions

    ours = [*_typed_dict_keys(TaskOptions), "name", "bind", "base"]
    notes = {
        "acks_late": "**differs**: default True (task_acks_late)",
        "rate_limit": "**differs**: counted across all workers (rate_limit_scope='global')",
        "typing": "checked at send, as Celery's",
        "reject_on_worker_lost": "**differs**: default True (task_reject_on_worker_lost)",
    }
    return table("task option", TASK_OPTIONS, ours, note=lambda n: notes.get(n, ""))


def send_options() -> str:
    """Celery's ``apply_async`` options against :class:`aqueue.sending.options.SendOptions`."""
    from aqueue.sending.options import SendOptions

    notes = {
        "eta": "a datetime (naive: UTC) or epoch seconds",
        "priority": "0..9, 9 runs first, on every broker",
        "exchange": "AMQP only; Redis and SQLite route by queue",
        "routing_key": "AMQP only; Redis and SQLite route by queue",
        "retry": "retries publishing while the broker is unreachable",
        "task_id": "an id already queued or done is not run again",
    }
    ours = _typed_dict_keys(SendOptions)
    return table("apply_async option", SEND_OPTIONS, ours, note=lambda n: notes.get(n, ""))


def commands() -> str:
    """Celery's commands against the ``aqueue`` typer app's."""
    import typer.main

    from aqueue.cli import cli

    root = typer.main.get_command(cli)
    ours = root.list_commands(root.context_class(root))  # type: ignore[attr-defined]
    text = table(
        "command",
        {**COMMANDS, **{k: v for k, v in EXTRA_COMMANDS.items() if k not in ours}},
        ours,
        ours_format=lambda n: f"[`aqueue {n}`](reference/cli.md#aqueue-{n})",
    )
    return text


def signals() -> str:
    """Celery's signals against :mod:`aqueue.signals`."""
    from aqueue import signals as ours

    names = [n for n in ours.__all__ if isinstance(getattr(ours, n), ours.Signal)]
    return table(
        "signal",
        SIGNALS,
        names,
        ours_format=lambda n: f"[`{n}`](reference/signals.md#{n})",
    )
