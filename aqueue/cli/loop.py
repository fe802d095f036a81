"""Running the CLI's event loop: uvloop's when it is installed (``pip install aqueue[uvloop]``).

uvloop runs the same asyncio code on libuv, with less overhead per callback and per socket
read, which a worker spends most of its time in. ``AQUEUE_LOOP`` chooses: ``auto`` (the default:
uvloop if importable, else asyncio's own), ``uvloop`` (an error if it is missing) or ``asyncio``.
Library use (``await add.delay()`` in your app) runs on whatever loop your app runs.
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
