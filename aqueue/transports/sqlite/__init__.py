"""The SQLite transport (``sqlite:///path.db``): aqueue's embedded default, for a worker and its
producers on one host with no server. Every role keeps its tables in the one database file
(:mod:`.schema`) and the roles of one app and event loop share one connection and its thread.
"""

from __future__ import annotations

from aqueue.transports.base import ClientTransport, RoleClasses
from aqueue.transports.sqlite.beat import SQLiteStore
from aqueue.transports.sqlite.broker import SQLiteBroker
from aqueue.transports.sqlite.connection import SQLiteConnection
from aqueue.transports.sqlite.control import SQLiteControl
from aqueue.transports.sqlite.results import SQLiteBackend
from aqueue.transports.sqlite.schema import SCHEMA

__all__ = ["SQLiteBackend", "SQLiteBroker", "SQLiteControl", "SQLiteStore", "Transport"]


class Transport(ClientTransport):
    """``sqlite:///path.db``: every role, over one connection to the file (``client``, a
    :class:`~aqueue.transports.sqlite.connection.SQLiteConnection`; a file: no timeouts).

    Raises:
        ConfigurationError: the URL names no usable file (see
            :func:`~aqueue.transports.sqlite.connection.sqlite_path`).
    """

    role_classes = RoleClasses(SQLiteBroker, SQLiteBackend, SQLiteControl, SQLiteStore)

    def _open_client(self) -> SQLiteConnection:
        return SQLiteConnection(self.url, "database", SCHEMA)
