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

    __slots__ = ("_factory", "_last", "_values")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        # The last loop asked for (weakly) and its value, in one tuple (read at once, so another
        # thread's get() cannot mix them): a send asks several times per call, nearly always
        # from the same loop, and this check costs a fraction of the dictionary's lookup.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], T] | None = None

    def get(self) -> T:
        """The running loop's value, made now if it has none.

        Raises:
            RuntimeError: no event loop is running.
        """
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._factory()
        self._last = (weakref.ref(loop, self._forget_last), value)
        return value

    def _forget_last(self, ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        """The last loop was collected: drop its value with it, as its entry is dropped."""
        last = self._last
        if last is not None and last[0] is ref:
            self._last = None

    def __len__(self) -> int:
        """How many live loops have a value."""
        return len(self._values)

    def pop(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """Forget ``loop``'s value and return it (``None``: it had none)."""
        last = self._last
        if last is not None and last[0]() is loop:
            self._last = None
        return self._values.pop(loop, None)
