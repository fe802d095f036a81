"""Every error aqueue raises, in one tree.

Callers catch by meaning, never by the library underneath (a ``redis.ConnectionError``
reaches user code as :class:`BrokerConnectionError`)::

    AqueueError
    ├── ConfigurationError          a bad setting, URL or app reference; says what to change
    │   └── UnknownSetting          a setting name aqueue does not have (a KeyError too)
    ├── ArgumentsError              a call's arguments do not fit its task (a TypeError too)
    ├── BrokerError
    │   └── BrokerConnectionError   the broker or result backend cannot be reached
    │       └── PublishIncomplete   some messages of one publish stored, the others not
    ├── SerializationError
    │   ├── EncodeError             a value cannot be serialised (arguments or a result)
    │   │   └── MessageTooLarge     a message over ``task_max_message_size``; nothing was sent
    │   ├── DecodeError             a message or result cannot be decoded
    │   │   └── SecurityError       unsigned or wrongly signed, with ``task_signing_key`` set
    │   └── ContentDisallowed       a content type not listed in ``accept_content``
    ├── TimeoutError                ``AsyncResult.get(timeout=...)`` ran out (a builtin one too)
    ├── TaskError                   a task failed remotely with an exception type we cannot import
    ├── TaskNotRegistered           no task of that name in the worker's app
    ├── TaskRevokedError            the task was revoked or its message expired
    ├── TimeLimitExceeded           the task ran past its ``time_limit`` and was cancelled
    ├── SoftTimeLimitExceeded       raised inside a coroutine task at its ``soft_time_limit``
    ├── StreamError                 a result stream over ``stream_max_items``, or an item missing
    ├── WorkerLostError             the worker died while running the task (not run again)
    ├── MaxRetriesExceededError     ``self.retry()`` called with no retries left
    ├── ChordError                  a member of a chord's header failed
    ├── DependencyFailed            a task's ``after=`` dependency failed, so it did not run
    └── Retry                       ``raise self.retry(...)``: the worker re-queues the task

``Retry`` is an exception used for control flow, as in Celery: a task raises it and the worker
publishes the task again; user code does not normally catch it.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any


class AqueueError(Exception):
    """Base class of every error raised by aqueue."""


class ConfigurationError(AqueueError):
    """A setting, broker URL, result backend URL or ``-A`` app reference is wrong.

    The message names the setting or URL and says how to fix it.
    """


class UnknownSetting(ConfigurationError, KeyError):
    """A setting name aqueue does not have: ``app.conf["nope"]``, ``app.conf.update(nope=1)``.

    Also a :class:`KeyError`, as Celery's ``app.conf[name]`` raises, so ``except KeyError``
    works. The message names what to use instead: the aqueue setting of a Celery name, why
    aqueue has none, or the closest aqueue name.
    """

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument (quoted); this is a sentence.
        return str(self.args[0]) if self.args else ""


class ArgumentsError(AqueueError, TypeError):
    """A call's arguments do not fit its task's signature; nothing was sent.

    ``delay()``, ``apply_async()``, ``delay_many()`` and ``send_task()`` of a registered task
    check the call before sending, as Celery's ``typing=True`` does (``@app.task(typing=False)``
    skips it). Also a :class:`TypeError`, as Celery raises, so ``except TypeError`` works.
    """


class BrokerError(AqueueError):
    """The broker or result backend failed an operation."""


class BrokerConnectionError(BrokerError):
    """The broker or result backend could not be reached; the message names which one and why."""


class PublishIncomplete(BrokerConnectionError):
    """A publish of several messages stored some of them and not the others: the broker
    confirmed part of a batch, then the connection dropped, or it refused some (RabbitMQ's
    ``basic.nack``). Those not in :attr:`failed` are stored.

    Attributes:
        failed: the index (in the list published) of each message not confirmed, with its
            error; such a message may or may not be stored (its confirm was lost), so sending
            it again is at-least-once.
    """

    def __init__(self, message: str, failed: Mapping[int, BrokerError]) -> None:
        super().__init__(message)
        self.failed: dict[int, BrokerError] = dict(failed)


class SerializationError(AqueueError):
    """A message body or a result could not be serialised or deserialised."""


class EncodeError(SerializationError):
    """A value (task arguments or a task's return value) cannot be serialised."""


class MessageTooLarge(EncodeError):
    """A message is larger than the ``task_max_message_size`` setting (bytes); nothing of the
    call (or of the batch, for ``delay_many`` and a canvas) was sent.

    Attributes:
        task: the task's name.
        size: the encoded message's size in bytes (signature included).
        limit: ``task_max_message_size``, in bytes.
    """

    def __init__(self, task: str, size: int, limit: int) -> None:
        super().__init__(
            f"message of {task} is {size} bytes, more than task_max_message_size={limit}: "
            f"nothing was sent (pass large data by reference, e.g. a path, URL or key)"
        )
        self.task = task
        self.size = size
        self.limit = limit


class DecodeError(SerializationError):
    """A message or stored result is not valid for its content type."""


class SecurityError(DecodeError):
    """With ``task_signing_key`` set, a message, result record or stored beat entry is unsigned,
    or its signature was not made by any of the keys (it was changed, or signed with another
    key); see docs/signing.md.

    A client reading such a result record gets this error instead of the value; a worker sends
    such a message to the dead-letter queue without running it.
    """


class ContentDisallowed(SerializationError):
    """The content type is not listed in the ``accept_content`` setting."""


class TimeoutError(AqueueError, builtins.TimeoutError):
    """``AsyncResult.get(timeout=...)`` gave up before the task finished.

    Also an instance of the builtin :class:`TimeoutError`, so ``except TimeoutError`` works with
    either import.
    """


class TaskError(AqueueError):
    """A task failed with an exception whose type cannot be imported in this process.

    Attributes:
        exc_type: the qualified name of the remote exception type, e.g. ``"mymod.QuotaError"``.
        exc_message: ``str()`` of the remote exception.
        remote_traceback: the formatted traceback from the worker, or ``None``.
    """

    def __init__(self, exc_type: str, exc_message: str, remote_traceback: str | None = None):
        super().__init__(f"{exc_type}: {exc_message}")
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback


class TaskNotRegistered(AqueueError):
    """No task of this name is registered with the app (check the name and the worker's ``-A``)."""


class TaskRevokedError(AqueueError):
    """The task was revoked, or its message expired before a worker could run it."""


class TimeLimitExceeded(AqueueError):
    """The task ran longer than its ``time_limit`` (seconds) and was cancelled."""


class SoftTimeLimitExceeded(AqueueError):
    """Raised inside a running ``async def`` task when it reaches its ``soft_time_limit``
    (seconds; the ``task_soft_time_limit`` setting or the task option), as in Celery.

    The task may catch it to clean up (close files, store partial work) and return or raise;
    its hard ``time_limit``, if any, still applies. Not caught, the task fails with it. A plain
    function running in a thread cannot be interrupted: it never sees this exception (the
    worker logs a warning at the soft limit).
    """


class StreamError(AqueueError):
    """A result stream broke its bounds: the task yielded more items than its
    ``stream_max_items`` (the task fails with this), or ``r.stream()`` found a stored item
    missing (expired with ``result_expires``, or forgotten)."""


class WorkerLostError(AqueueError):
    """The worker died while running the task, and ``task_reject_on_worker_lost=False`` said
    not to run it again: the task's result is this ``FAILURE``, as in Celery."""


class MaxRetriesExceededError(AqueueError):
    """``self.retry()`` was called on a task that has already used ``max_retries`` retries."""


class ChordError(AqueueError):
    """A task in a chord's header failed, so the chord's body did not run."""


class DependencyFailed(AqueueError):
    """A task sent with ``after=[...]`` did not run: a dependency failed, was revoked, or its
    result was gone; the message names that dependency (``name[id]``) and its error."""


class Retry(AqueueError):
    """Raised by ``raise self.retry(...)``: the worker publishes the task again and acks this one.

    Attributes:
        exc: the exception that caused the retry, if any.
        when: the delay in seconds (``float``) or the absolute time (``datetime``) of the next try.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
        **kwargs: Any,
    ):
        self.exc = exc
        self.when = when
        self.options = kwargs
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        if isinstance(self.when, int | float):
            when = f"in {self.when:g}s"
        elif self.when is not None:
            when = f"at {self.when.isoformat()}"
        else:
            when = "now"
        return f"Retry {when}" + (f": {self.exc!r}" if self.exc is not None else "")
