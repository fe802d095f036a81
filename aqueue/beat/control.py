"""``app.beat``: add, change, remove and list periodic entries at runtime, without a restart.

What Celery needs django-celery-beat for. Entries are kept in the beat store next to the results
(:mod:`aqueue.transports.base`), so every beat process sharing the result backend picks a change up
on its next read of the store (within ``max_interval``, one second). A stored entry with the
name of a ``beat_schedule`` entry replaces it until the stored one is removed.
"""

from __future__ import annotations

import builtins
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aqueue.beat.entry import Entry, decode_entry, parse_entry, static_entries
from aqueue.exceptions import ConfigurationError, SecurityError
from aqueue.task import Task
from aqueue.transports.base import BeatStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aqueue.app import Aqueue

__all__ = ["BeatControl"]


class BeatControl:
    """Manage the stored periodic entries of ``app`` (``app.beat``).

    Each call uses the app's beat store for the running event loop (on the result backend's
    server, over the app's one client there); ``await app.close()`` closes it.
    """

    def __init__(self, app: Aqueue) -> None:
        self.app = app

    @asynccontextmanager
    async def _store(self) -> AsyncIterator[BeatStore]:
        yield await self.app.beat_store()

    async def add(
        self,
        name: str,
        *,
        task: str | Task[Any, Any],
        schedule: Any,
        args: tuple[Any, ...] | builtins.list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        catch_up: str = "once",
    ) -> Entry:
        """Add the entry ``name``, or replace the stored entry of that name.

        Args:
            name: the entry's name.
            task: a registered task name, or the task itself.
            schedule: a ``timedelta``, a number of seconds, or a ``crontab``.
            args: the call's positional arguments (JSON-serialisable: stored as JSON).
            kwargs: the call's keyword arguments (JSON-serialisable: stored as JSON).
            options: ``apply_async`` options (``queue``, ``priority``, ``expires`` in seconds...).
            catch_up: ``"once"``, ``"all"`` or ``"none"`` (see :mod:`aqueue.beat.entry`).

        Returns:
            The stored entry. Its ticks start after now: none before the call is sent.

        Raises:
            ConfigurationError: the entry is invalid, or there is no result backend.
            BrokerConnectionError: the store cannot be reached.
        """
        task_name = task.name if isinstance(task, Task) else task
        spec = {
            "task": task_name,
            "schedule": schedule,
            "args": tuple(args),
            "kwargs": dict(kwargs or {}),
            "options": dict(options or {}),
            "catch_up": catch_up,
        }
        entry = replace(parse_entry(self.app, name, spec, dynamic=True), since=time.time())
        data = entry.encode()
        signing = self.app.conf.signing
        if signing is not None:
            data = signing.beat.sign(data)
        async with self._store() as store:
            await store.put(name, data)
        return entry

    async def remove(self, name: str) -> bool:
        """Remove the stored entry ``name``; running beats stop sending it within a second.

        Returns:
            ``True`` if it was stored, ``False`` if there was no entry of that name.

        Raises:
            ConfigurationError: ``name`` is only in ``beat_schedule`` (remove it from the code).
            BrokerConnectionError: the store cannot be reached.
        """
        async with self._store() as store:
            removed = await store.remove(name)
        if not removed and name in self.app.conf.beat_schedule:
            raise ConfigurationError(
                f"beat entry {name!r} is defined in beat_schedule (code), not stored: remove it "
                f"there and restart the beats"
            )
        return removed

    async def list(self) -> builtins.list[Entry]:
        """Every entry beat runs - ``beat_schedule``'s and the stored ones - sorted by name, with
        ``last_run`` (the last tick sent, epoch seconds) and ``dynamic`` (stored) filled in.

        Raises:
            ConfigurationError: a ``beat_schedule`` entry is invalid.
            BrokerConnectionError: the store cannot be reached.
        """
        async with self._store() as store:
            snapshot = await store.load()
        entries = static_entries(self.app)
        for name, data in snapshot.entries.items():
            try:
                entries[name] = decode_entry(self.app, name, data)
            except (ConfigurationError, SecurityError):
                continue  # unreadable or not signed with the key: beats skip it too, and log why
        out = []
        for name in sorted(entries):
            last = snapshot.last.get(name)
            out.append(replace(entries[name], last_run=None if last is None else last / 1000))
        return out
