"""The SQLite transport (``sqlite:///path.db``): aqueue's embedded default, for a worker and its
producers on one host with no server. Every role keeps its tables in the one database file
(:mod:`.schema`) and the roles of one app and event loop share one connection and its thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from aqueue.transports.base import (
    BaseTransport,
    BeatStore,
    Broker,
    ConnectionOptions,
    ControlTransport,
    ResultBackend,
)
from aqueue.transports.sqlite.beat import SQLiteStore
from aqueue.transports.sqlite.broker import SQLiteBroker
from aqueue.transports.sqlite.connection import SQLiteConnection
from aqueue.transports.sqlite.control import SQLiteControl
from aqueue.transports.sqlite.results import SQLiteBackend
from aqueue.transports.sqlite.schema import SCHEMA

__all__ = ["SQLiteBackend", "SQLiteBroker", "SQLiteControl", "SQLiteStore", "Transport"]


class Transport(BaseTransport):
    """``sqlite:///path.db``: every role, over one connection to the file.

    Raises:
        ConfigurationError: the URL names no usable file (see
            :func:`~aqueue.transports.sqlite.connection.sqlite_path`).
    """

    roles: ClassVar[frozenset[str]] = frozenset({"broker", "results", "control", "beat"})

    def __init__(
        self, url: str, *, shared: bool = True, connection: ConnectionOptions | None = None
    ) -> None:
        super().__init__(url, shared=shared, connection=connection)  # a file: no timeouts
        self.db: SQLiteConnection | None = (
            SQLiteConnection(url, "database", SCHEMA) if shared else None
        )

    def _make_broker(self, options: Mapping[str, Any]) -> Broker:
        return SQLiteBroker(self.url, options, self.db)

    def _make_results(self) -> ResultBackend:
        return SQLiteBackend(self.url, self.db)

    def _make_control(self) -> ControlTransport:
        return SQLiteControl(self.url, self.db)

    def _make_beat(self, namespace: str) -> BeatStore:
        return SQLiteStore(self.url, namespace, self.db)

    async def _close_client(self) -> None:
        if self.db is not None:
            await self.db.close()
