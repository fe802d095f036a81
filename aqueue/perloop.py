"""State kept per running event loop: asyncio objects (locks, clients, futures) belong to the
loop that made them, so an app or sender used from several loops keeps one set per loop."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``T`` per event loop, made by ``factory()`` on first use in that loop and dropped
    when the loop is garbage-collected (or by :meth:`pop`)."""

    __slots__ = ("_factory", "_values")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """The running loop's value, made now if it has none.

        Raises:
            RuntimeError: no event loop is running.
        """
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._factory()
        return value

    def __len__(self) -> int:
        """How many live loops have a value."""
        return len(self._values)

    def pop(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """Forget ``loop``'s value and return it (``None``: it had none)."""
        return self._values.pop(loop, None)
