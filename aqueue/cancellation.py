"""Telling a callee's own error from the caller's cancellation.

A task, a task's hook or a signal receiver may let out a :class:`asyncio.CancelledError` of its
own (it cancelled a helper task and awaited it): that is its error, to be recorded or logged like
any exception. One that comes while the running ``asyncio.Task``'s cancellation was requested
(a worker stopping) is not: it must propagate. ``cancelling()`` taken before the call tells the
two apart.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancelling", "is_task_failure"]

#: What a task may raise that is not its failure but must end the process, as everywhere.
_FATAL = (KeyboardInterrupt, SystemExit)


def is_task_failure(exc: BaseException, cancelling: int = 0) -> bool:
    """True if ``exc``, raised out of a task's code, is the task's own failure, to be recorded
    as any exception is; False if it must propagate.

    Every :class:`Exception` is a failure, and so is any other :class:`BaseException` but
    :class:`KeyboardInterrupt` and :class:`SystemExit` (a ``GeneratorExit`` raised by hand, a
    library's own base exception), and an :class:`asyncio.CancelledError` raised while no
    cancellation of the running ``asyncio.Task`` was requested beyond ``cancelling`` (its
    ``cancelling()`` when the run began): a task that cancels a helper task and awaits it
    without suppressing the error. A ``CancelledError`` that comes while the running task's
    cancellation was requested (a worker shutdown) is not: it must reach the runner, whose
    message is then handed back.
    """
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, _FATAL):
        return False
    if isinstance(exc, asyncio.CancelledError):
        current = asyncio.current_task()
        return current is not None and current.cancelling() <= cancelling
    return True


def cancelling() -> int:
    """The running ``asyncio.Task``'s ``cancelling()`` (0 outside a task): what
    :func:`is_task_failure` compares with."""
    current = asyncio.current_task()
    return 0 if current is None else current.cancelling()
