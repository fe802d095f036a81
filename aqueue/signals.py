"""Signals: hooks that user code connects to, named and shaped as Celery's.

A receiver is a function or a coroutine function taking the signal's arguments as keywords
(always ``sender`` and ``signal``, then those listed per signal below), plus ``**kwargs`` so
that arguments added later do not break it::

    from aqueue.signals import task_failure

    @task_failure.connect
    async def report(sender, task_id, exception, **kwargs):
        await alerts.send(f"{sender.name}[{task_id}] failed: {exception!r}")

    @task_success.connect(sender="proj.add")       # only for that task (name or Task object)
    def added(sender, result, **kwargs): ...

Receivers run in the order they were connected, on the event loop of whatever sends the
signal (a worker's loop for the task signals). A receiver that raises (even a
``CancelledError`` of its own) is logged (logger ``aqueue.signals``, with its traceback) and
never fails the task, the send or the worker; the other receivers still run. A signal with
no receiver costs one attribute check at its call site.

Differences from Celery: receivers may be coroutine functions (awaited in turn); references to
receivers are strong (``weak=False`` is the only mode: a receiver defined inside a function stays
connected until :meth:`Signal.disconnect`); ``send`` returns the ``(receiver, response)`` pairs
as Celery's ``send`` does, with the exception as the response of a receiver that raised.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

from aqueue.cancellation import cancelling, is_task_failure

__all__ = [
    "Signal",
    "after_task_publish",
    "beat_init",
    "before_task_publish",
    "setup_logging",
    "task_dead_lettered",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_slow",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
]

log = logging.getLogger("aqueue.signals")

Receiver = Callable[..., Any]
F = TypeVar("F", bound=Receiver)


def _sender_key(sender: Any) -> Any:
    """What a ``sender=`` filter is compared by: a task matches its object and its name."""
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) else sender


class Signal:
    """A named hook with an ordered list of receivers (Celery's ``celery.utils.dispatch.Signal``).

    Args:
        name: the signal's name, as in Celery (``"task_success"``).
        providing_args: the keyword arguments it sends besides ``sender`` and ``signal``
            (documentation only; receivers must accept ``**kwargs``).
    """

    def __init__(self, name: str, providing_args: tuple[str, ...] = (), doc: str = "") -> None:
        self.name = name
        self.providing_args = providing_args
        self.__doc__ = doc or f"The {name} signal."
        #: ``(receiver, sender filter key or None, dispatch_uid or None)``, in order.
        self.receivers: list[tuple[Receiver, Any, str | None]] = []

    def __repr__(self) -> str:
        return f"<Signal: {self.name} ({len(self.receivers)} receivers)>"

    @overload
    def connect(self, receiver: F, *, sender: Any = None, dispatch_uid: str | None = None) -> F: ...

    @overload
    def connect(
        self, receiver: None = None, *, sender: Any = None, dispatch_uid: str | None = None
    ) -> Callable[[F], F]: ...

    def connect(
        self, receiver: F | None = None, *, sender: Any = None, dispatch_uid: str | None = None
    ) -> F | Callable[[F], F]:
        """Connect ``receiver`` (a function or coroutine function); usable as a decorator, bare
        (``@sig.connect``) or with arguments (``@sig.connect(sender="proj.add")``).

        Args:
            receiver: called with keyword arguments on every send.
            sender: only sends from this sender (a task, or a task's name, for task signals).
                As in Celery, a receiver is connected once per sender: connected for two tasks,
                it hears both.
            dispatch_uid: connecting again with the same id (and sender) replaces nothing and
                adds nothing (Celery's way to connect once from a module imported twice).

        Returns:
            ``receiver`` itself (or a decorator that returns it).

        Raises:
            TypeError: ``receiver`` is not callable.
        """

        def add(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"a {self.name} receiver must be callable, not {fn!r}")
            key = None if sender is None else _sender_key(sender)
            for existing, wanted, uid in self.receivers:
                same = uid == dispatch_uid if dispatch_uid is not None else existing == fn
                if same and wanted == key:
                    return fn
            self.receivers = [*self.receivers, (fn, key, dispatch_uid)]  # copy: sends iterate
            return fn

        return add if receiver is None else add(receiver)

    def disconnect(
        self, receiver: Receiver | None = None, *, dispatch_uid: str | None = None
    ) -> bool:
        """Disconnect ``receiver`` (or the one connected with ``dispatch_uid``).

        Returns:
            True when a receiver was disconnected.
        """
        kept = [
            entry
            for entry in self.receivers
            if not (
                (dispatch_uid is not None and entry[2] == dispatch_uid)
                or (receiver is not None and entry[0] == receiver)
            )
        ]
        removed = len(kept) != len(self.receivers)
        self.receivers = kept
        return removed

    async def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver whose sender filter matches, in order; await coroutine results.

        Returns:
            ``(receiver, response)`` per receiver called; a receiver that raised gets its
            exception as response (and is logged), as Celery's ``send_robust`` does.
        """
        if not self.receivers:
            return []
        key = _sender_key(sender)
        entered = cancelling()
        responses: list[tuple[Receiver, Any]] = []
        for receiver, wanted, _ in self.receivers:
            if wanted is not None and wanted != key:
                continue
            try:
                response = receiver(sender=sender, signal=self, **named)
                if inspect.isawaitable(response):
                    response = await response
            except BaseException as exc:  # one receiver never fails the others or the caller
                # A receiver's own error, even a CancelledError it let out (it awaited something
                # cancelled), as a task's; a worker stopping still reaches the caller.
                if not is_task_failure(exc, entered):
                    raise
                log.exception("Signal %s: receiver %r raised", self.name, receiver)
                response = exc
            responses.append((receiver, response))
        return responses

    send_robust = send  # Celery's name for the variant that catches receivers' errors

    def send_sync(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """:meth:`send` outside an event loop (``setup_logging``, ``worker_process_init``): a
        coroutine receiver is run to completion with :func:`asyncio.run`.

        Returns:
            As :meth:`send`.
        """
        if not self.receivers:
            return []
        return asyncio.run(self.send(sender, **named))


def _signal(name: str, providing_args: str, doc: str) -> Signal:
    return Signal(name, tuple(providing_args.split()), doc)


# -- publishing --------------------------------------------------------------------------------

before_task_publish = _signal(
    "before_task_publish",
    "body exchange routing_key headers properties declare retry_policy",
    """Before a task message is published; ``sender`` is the task's name. ``body`` is the
    message (:class:`aqueue.message.Message`), ``headers`` its headers dict, which a receiver may
    change (what it adds travels with the message), ``routing_key`` the queue.""",
)
after_task_publish = _signal(
    "after_task_publish",
    "body exchange routing_key headers",
    """After a task message was published (the broker confirmed it); ``sender`` is the task's
    name.""",
)

# -- the worker, per task ----------------------------------------------------------------------

task_received = _signal(
    "task_received",
    "request",
    """A worker received a task message and decoded it; ``sender`` is the worker, ``request``
    the :class:`aqueue.task.Request`.""",
)
task_prerun = _signal(
    "task_prerun",
    "task_id task args kwargs",
    """Just before a task runs; ``sender`` is the :class:`~aqueue.task.Task`.""",
)
task_postrun = _signal(
    "task_postrun",
    "task_id task args kwargs retval state",
    """After a task ran, whatever its outcome (``state``: SUCCESS, FAILURE, RETRY...);
    ``sender`` is the task.""",
)
task_success = _signal(
    "task_success",
    "result",
    """A task succeeded; ``sender`` is the task, ``result`` its return value.""",
)
task_failure = _signal(
    "task_failure",
    "task_id exception args kwargs traceback einfo",
    """A task failed (no retry left); ``sender`` is the task, ``traceback``/``einfo`` the
    formatted traceback (a string).""",
)
task_retry = _signal(
    "task_retry",
    "request reason einfo",
    """A task is to be retried; ``sender`` is the task, ``reason`` the exception.""",
)
task_revoked = _signal(
    "task_revoked",
    "request terminated signum expired",
    """A task was revoked (before or while running) or expired; ``sender`` is the task.""",
)
task_slow = _signal(
    "task_slow",
    "task_id request runtime deadline",
    """A running task passed its soft deadline (``soft_deadline``, ``task_soft_deadline``) and
    runs on; sent once per run. ``sender`` is the task, ``runtime`` the seconds it has run,
    ``deadline`` its soft deadline (seconds). aqueue's own (Celery has none).""",
)
task_unknown = _signal(
    "task_unknown",
    "name id message exc",
    """A worker received a message for a task it does not know (dead-lettered); ``sender`` is
    the worker.""",
)
task_dead_lettered = _signal(
    "task_dead_lettered",
    "task_id name queue reason",
    """A worker sent a message to its queue's dead-letter queue (unknown task, undecodable or
    unsigned message, arguments that do not fit, unserialisable result, poison message);
    ``sender`` is the worker's hostname; ``task_id`` and ``name`` are ``None`` when the message
    could not be read. aqueue's own (Celery has none).""",
)
task_rejected = _signal(
    "task_rejected",
    "message exc",
    """A worker refused a message it could not decode or accept (dead-lettered with a reason);
    ``sender`` is the worker.""",
)

# -- the worker, its life ----------------------------------------------------------------------

worker_init = _signal(
    "worker_init", "", """A worker is starting, before it connects; ``sender`` is the worker."""
)
worker_process_init = _signal(
    "worker_process_init",
    "",
    """A child process of ``--processes N`` started; ``sender`` is ``None``.""",
)
worker_ready = _signal(
    "worker_ready", "", """A worker connected and consumes; ``sender`` is the worker."""
)
worker_shutting_down = _signal(
    "worker_shutting_down",
    "sig how exitcode",
    """A worker begins to shut down; ``sender`` is its hostname, ``sig`` the signal's name
    (``"SIGTERM"``...), ``how`` ``"Warm"`` or ``"Cold"``.""",
)
worker_shutdown = _signal("worker_shutdown", "", """A worker stopped; ``sender`` is the worker.""")

# -- beat and logging --------------------------------------------------------------------------

beat_init = _signal("beat_init", "", """Beat is starting; ``sender`` is the beat service.""")
setup_logging = _signal(
    "setup_logging",
    "loglevel logfile format colorize",
    """The CLI is about to configure logging; when any receiver is connected, aqueue leaves
    logging to it (as Celery does).""",
)
