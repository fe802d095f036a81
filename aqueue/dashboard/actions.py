"""The dashboard's actions: ``POST /actions/<name>`` with a JSON object, answered with
``{"ok": bool, "message": str}``.

Access (authentication, read-only mode, CSRF) is checked before any of these runs (see
:mod:`aqueue.dashboard.access`). Each action checks its own input: a missing or malformed field
is answered with 400 and changes nothing. They do what the command line does, through the same
library calls: ``app.control`` (revoke, shutdown, consumers, rate limits),
:mod:`aqueue.control.queues` (purge, dead letters) and ``app.beat`` (periodic entries).
"""

from __future__ import annotations

import ast
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson

from aqueue.beat.schedules import crontab
from aqueue.control.protocol import Reply
from aqueue.control.queues import purge, replay_dead_letters
from aqueue.dashboard.pages import BEAT_DISABLED
from aqueue.exceptions import AqueueError, ConfigurationError
from aqueue.transports.base import queue_admin

if TYPE_CHECKING:
    from aqueue.dashboard.monitor import Monitor

__all__ = ["ACTIONS", "ActionError", "run_action"]

Action = Callable[["Monitor", dict[str, Any]], Awaitable[str]]


class ActionError(Exception):
    """Bad input for an action: answered with 400 and this message."""


def _text(data: dict[str, Any], key: str, *, required: bool = True, limit: int = 500) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ActionError(f"{key} must be a string")
    value = value.strip()
    if required and not value:
        raise ActionError(f"{key} is required")
    if len(value) > limit:
        raise ActionError(f"{key} is longer than {limit} characters")
    return value


def _replied(replies: list[Reply], what: str) -> str:
    if not replies:
        return f"{what}: no worker replied"
    errors = [f"{r.hostname}: {r.error}" for r in replies if r.error]
    if errors:
        return f"{what}: " + "; ".join(errors)
    return f"{what}: {', '.join(sorted(r.hostname for r in replies))} replied"


# -- tasks ---------------------------------------------------------------------------------------


async def revoke(m: Monitor, data: dict[str, Any]) -> str:
    """Revoke a task (``terminate``: also cancel it where it runs)."""
    task_id = _text(data, "task_id", limit=200)
    terminate = bool(data.get("terminate"))
    await m.app.control.revoke(task_id, terminate=terminate)
    return f"{'terminated' if terminate else 'revoked'} {task_id}"


def _literal(text: str | None, kind: type, what: str) -> Any:
    """``args``/``kwargs`` back from the ``repr`` a worker sent, if it was not shortened."""
    if text is None:
        return kind()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ActionError(
            f"the {what} of this task were shortened or are not plain values in its events; "
            f"send it again from code"
        ) from exc
    allowed = (list, tuple) if kind is list else (dict,)
    if not isinstance(value, allowed):
        raise ActionError(f"the {what} of this task are not a {kind.__name__}")
    return value


async def resend(m: Monitor, data: dict[str, Any]) -> str:
    """Send a task again with the same name, arguments and queue (a new task id)."""
    task_id = _text(data, "task_id", limit=200)
    record = m.history.get(task_id)
    if record is None or not record.name:
        raise ActionError(f"task {task_id} is not in the history")
    args = _literal(record.args, list, "arguments")
    kwargs = _literal(record.kwargs, dict, "keyword arguments")
    options: dict[str, Any] = {"queue": record.queue} if record.queue else {}
    result = await m.app.send_task(record.name, list(args), dict(kwargs), **options)
    return f"sent again as {result.id}"


# -- workers -------------------------------------------------------------------------------------


async def shutdown(m: Monitor, data: dict[str, Any]) -> str:
    """Shut one worker down gracefully."""
    hostname = _text(data, "hostname")
    return _replied(await m.app.control.shutdown([hostname]), f"shutdown {hostname}")


async def add_consumer(m: Monitor, data: dict[str, Any]) -> str:
    """Make one worker consume a queue too."""
    hostname, queue = _text(data, "hostname"), _text(data, "queue", limit=200)
    replies = await m.app.control.add_consumer(queue, [hostname])
    return _replied(replies, f"add consumer {queue}")


async def cancel_consumer(m: Monitor, data: dict[str, Any]) -> str:
    """Make one worker stop consuming a queue."""
    hostname, queue = _text(data, "hostname"), _text(data, "queue", limit=200)
    replies = await m.app.control.cancel_consumer(queue, [hostname])
    return _replied(replies, f"cancel consumer {queue}")


async def rate_limit(m: Monitor, data: dict[str, Any]) -> str:
    """Set a task's rate limit on one worker, or on all when ``hostname`` is empty."""
    hostname = _text(data, "hostname", required=False)
    task, rate = _text(data, "task", limit=200), _text(data, "rate", limit=50)
    try:
        replies = await m.app.control.rate_limit(
            task, rate, destination=[hostname] if hostname else None
        )
    except ConfigurationError as exc:
        raise ActionError(str(exc)) from exc
    return _replied(replies, f"rate limit {task} = {rate}")


# -- queues --------------------------------------------------------------------------------------


def _confirmed(data: dict[str, Any]) -> str:
    queue = _text(data, "queue", limit=200)
    if _text(data, "confirm", required=False, limit=200) != queue:
        raise ActionError(f"type the queue's name ({queue}) to confirm")
    return queue


async def purge_queue(m: Monitor, data: dict[str, Any]) -> str:
    """Delete the waiting messages of a queue (``confirm`` must repeat its name)."""
    queue = _confirmed(data)
    return f"purged {await purge(m.app, [queue])} message(s) from {queue}"


async def dlq_replay(m: Monitor, data: dict[str, Any]) -> str:
    """Send a queue's dead letters back to it: the oldest one, or all with ``all``."""
    queue = _text(data, "queue", limit=200)
    done = await replay_dead_letters(m.app, queue, None if data.get("all") else 1)
    return f"replayed {done} dead letter(s) of {queue}"


async def dlq_purge(m: Monitor, data: dict[str, Any]) -> str:
    """Delete a queue's dead letters (``confirm`` must repeat its name)."""
    queue = _confirmed(data)
    done = await queue_admin(await m.app.broker()).purge_dead_letters(queue)
    return f"deleted {done} dead letter(s) of {queue}"


# -- beat ----------------------------------------------------------------------------------------


def _json(data: dict[str, Any], key: str, kind: type) -> Any:
    text = _text(data, key, required=False, limit=10_000)
    if not text:
        return kind()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ActionError(f"{key} is not JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise ActionError(f"{key} must be a JSON {'array' if kind is list else 'object'}")
    return value


async def beat_add(m: Monitor, data: dict[str, Any]) -> str:
    """Add (or replace) a stored beat entry: ``every`` seconds or a ``cron`` line."""
    name, task = _text(data, "name", limit=200), _text(data, "task", limit=200)
    every, cron = _text(data, "every", required=False), _text(data, "cron", required=False)
    schedule: Any
    try:
        if cron:
            schedule = crontab.from_string(cron)
        elif every:
            seconds = float(every)
            if not 0 < seconds < 10**9:
                raise ActionError("every must be a positive number of seconds")
            schedule = timedelta(seconds=seconds)
        else:
            raise ActionError("give every (seconds) or cron")
        await m.app.beat.add(
            name,
            task=task,
            schedule=schedule,
            args=_json(data, "args", list),
            kwargs=_json(data, "kwargs", dict),
        )
    except (ConfigurationError, ValueError) as exc:
        raise ActionError(str(exc)) from exc
    return f"beat entry {name} stored"


async def beat_remove(m: Monitor, data: dict[str, Any]) -> str:
    """Remove a stored beat entry."""
    name = _text(data, "name", limit=200)
    try:
        removed = await m.app.beat.remove(name)
    except ConfigurationError as exc:
        raise ActionError(str(exc)) from exc
    if not removed:
        raise ActionError(f"no stored beat entry {name}")
    return f"beat entry {name} removed"


async def beat_disable(m: Monitor, data: dict[str, Any]) -> str:
    """Disable a stored entry: park it in the control table :data:`BEAT_DISABLED`."""
    name = _text(data, "name", limit=200)
    store = await m.app.beat_store()
    stored = (await store.load()).entries.get(name)
    if stored is None:
        raise ActionError(
            f"{name} is not a stored entry: entries of beat_schedule are changed in code"
        )
    await (await m.app.control_transport()).put(BEAT_DISABLED, name, stored, None)
    await store.remove(name)
    return f"beat entry {name} disabled"


async def beat_enable(m: Monitor, data: dict[str, Any]) -> str:
    """Put a disabled entry back in the beat store."""
    name = _text(data, "name", limit=200)
    control = await m.app.control_transport()
    _, parked = await control.read(BEAT_DISABLED)
    if name not in parked:
        raise ActionError(f"{name} is not disabled")
    await (await m.app.beat_store()).put(name, parked[name])
    await control.put(BEAT_DISABLED, name, None, None)
    return f"beat entry {name} enabled"


ACTIONS: dict[str, Action] = {
    "revoke": revoke,
    "resend": resend,
    "shutdown": shutdown,
    "add_consumer": add_consumer,
    "cancel_consumer": cancel_consumer,
    "rate_limit": rate_limit,
    "purge": purge_queue,
    "dlq_replay": dlq_replay,
    "dlq_purge": dlq_purge,
    "beat_add": beat_add,
    "beat_remove": beat_remove,
    "beat_disable": beat_disable,
    "beat_enable": beat_enable,
}


async def run_action(m: Monitor, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Run action ``name`` with the JSON object ``body``: ``(HTTP status, answer)``."""
    action = ACTIONS.get(name)
    if action is None:
        return 404, {"ok": False, "message": f"no action {name!r}"}
    try:
        data = orjson.loads(body or b"{}")
        if not isinstance(data, dict):
            raise ActionError("the body must be a JSON object")
        message = await action(m, data)
    except orjson.JSONDecodeError:
        return 400, {"ok": False, "message": "the body is not JSON"}
    except ActionError as exc:
        return 400, {"ok": False, "message": str(exc)}
    except AqueueError as exc:
        return 502, {"ok": False, "message": str(exc)}
    m.notify_soon()
    return 200, {"ok": True, "message": message}
