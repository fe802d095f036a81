"""Reading a beat store's rows when some are not what beat writes (shared by the stores).

A row written by hand, by another program or by a broken copy (a TEXT entry, a last tick that
is not an integer, a hash field that is not UTF-8) must not stop every entry: the stores leave
such a row out of their :class:`~aqueue.transports.base.Snapshot`, and :class:`UnreadableRows`
logs it once (again only if it changes). An entry whose last tick is unreadable is named in
``Snapshot.unreadable``: beat then starts it from now, as an entry seen for the first time, and
its next confirmed tick overwrites the row.
"""

from __future__ import annotations

import logging

from aqueue.transports.base import Snapshot

__all__ = ["UnreadableRows", "read_name", "read_tick"]

logger = logging.getLogger("aqueue.beat")


def read_name(raw: object) -> str | None:
    """An entry name as beat writes it (text, or UTF-8 bytes from Redis), else ``None``."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None
    return None


def read_tick(raw: object) -> int | None:
    """A last tick as beat writes it (an integer of epoch ms, or its decimal digits from
    Redis), else ``None``."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, bytes) and raw.isdigit() and raw.isascii():
        return int(raw)
    return None


class UnreadableRows:
    """Collects one load's unreadable rows and logs each new one once.

    Args:
        where: the store, for the log line (e.g. ``"sqlite beat store of app 'proj'"``).
    """

    def __init__(self, where: str) -> None:
        self._where = where
        self._logged: set[tuple[str, str]] = set()
        self._found: set[tuple[str, str]] = set()
        self._lost: set[str] = set()

    def entry(self, name: object, data: object) -> tuple[str, bytes] | None:
        """A stored entry's row as ``(name, data)``, or ``None`` (logged) if unreadable."""
        key = read_name(name)
        if key is not None and isinstance(data, bytes):
            return key, data
        why = "its name is not text" if key is None else f"its data is {_kind(data)}, not bytes"
        self._bad(f"stored entry {_shown(name)}", data, why)
        return None

    def last(self, name: object, tick: object) -> tuple[str, int] | None:
        """An entry's last-tick row as ``(name, tick)``, or ``None`` (logged) if unreadable."""
        key = read_name(name)
        value = read_tick(tick)
        if key is not None and value is not None:
            return key, value
        if key is None:
            self._bad(f"last tick of entry {_shown(name)}", tick, "the name is not text")
        else:
            self._lost.add(key)
            why = "the entry starts from now; its next tick sent overwrites it"
            self._bad(f"last tick of entry {key!r}", tick, f"not an integer: {why}")
        return None

    def snapshot(self, entries: dict[str, bytes], last: dict[str, int]) -> Snapshot:
        """The snapshot of this load; logs the new unreadable rows and forgets the fixed ones."""
        unreadable = frozenset(self._lost)
        self._logged &= self._found  # a row fixed then broken again is logged again
        self._found = set()
        self._lost = set()
        return Snapshot(entries, last, unreadable)

    def _bad(self, what: str, value: object, why: str) -> None:
        key = (what, repr(value))
        self._found.add(key)
        if key not in self._logged:
            self._logged.add(key)
            logger.error(
                "beat: %s: skipping unreadable %s = %s (%s); other entries run as usual",
                self._where,
                what,
                _shown(value),
                why,
            )


def _kind(value: object) -> str:
    return "NULL" if value is None else type(value).__name__


def _shown(value: object) -> str:
    """``value``'s repr, cut at 80 characters (a row may hold anything)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
