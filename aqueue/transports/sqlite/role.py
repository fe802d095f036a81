"""What every SQLite role (broker, results, control, beat store) does alike: its connection."""

from __future__ import annotations

from aqueue.transports.sqlite.connection import SQLiteConnection
from aqueue.transports.sqlite.schema import SCHEMA

__all__ = ["SQLiteRole"]


class SQLiteRole:
    """A role over a :class:`SQLiteConnection`: the transport's shared one, or its own.

    Args:
        url: ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``.
        role: the role's name, for error messages (``"broker"``, ``"result backend"``...).
        db: the connection shared by the transport's roles; ``None`` opens one of its own,
            closed with the role.

    Raises:
        ConfigurationError: the URL is not a usable SQLite file URL (or is ``:memory:``).
    """

    def __init__(self, url: str, role: str, db: SQLiteConnection | None) -> None:
        self.url = url
        self._db = db or SQLiteConnection(url, role, SCHEMA)
        self._owns_db = db is None

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._db.path

    async def connect(self) -> None:
        """Open the file, switch it to WAL mode and create the tables if needed. Idempotent.

        Raises:
            BrokerConnectionError: the file cannot be opened (e.g. its directory is missing);
                the message names the path and SQLite's reason.
        """
        await self._db.open()

    async def _close_db(self) -> None:
        """Close the connection if it is this role's own (a later operation reopens it)."""
        if self._owns_db:
            await self._db.close()
