"""The event loop aqueue runs its own code on: uvloop's where it is installed, else asyncio's.

uvloop runs the same asyncio code on libuv, with less overhead per callback and per socket
read. It is an extra (``pip install aqueue[uvloop]``), not a dependency: aqueue's worker makes
few loop callbacks per task, and uvloop saved it about 3% of its CPU per task in the
measurements of docs/performance.md (*The event loop*). ``AQUEUE_LOOP`` chooses: ``auto``
(the default: uvloop if importable, else asyncio's own), ``uvloop`` (an error if it is missing)
or ``asyncio``.

It applies to the loops aqueue owns: the CLI's (``aqueue worker``, ``beat``, the operations
commands) and the sync client's background loop (:mod:`aqueue.sync`). Library use (``await
add.delay()`` in your app) runs on whatever loop your app runs; uvicorn, for one, picks uvloop
by itself when it is installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aqueue.exceptions import ConfigurationError

T = TypeVar("T")

LOOP_ENV = "AQUEUE_LOOP"
_CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory ``AQUEUE_LOOP`` asks for; ``None`` means asyncio's default.

    Raises:
        ConfigurationError: ``AQUEUE_LOOP`` is not auto/uvloop/asyncio, or is ``uvloop`` and
            uvloop is not installed.
    """
    choice = os.environ.get(LOOP_ENV, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ConfigurationError(f"{LOOP_ENV}={choice!r}: choose one of {', '.join(_CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                f"{LOOP_ENV}=uvloop but uvloop is not installed: pip install 'aqueue[uvloop]'"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the kind :func:`loop_factory` picks.

    Raises:
        ConfigurationError: see :func:`loop_factory`.
    """
    return (loop_factory() or asyncio.new_event_loop)()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks.

    Raises:
        ConfigurationError: see :func:`loop_factory` (``main`` is closed, never run).
    """
    try:
        factory = loop_factory()
    except ConfigurationError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
