"""Every table and index of a SQLite transport's database file, created together on open.

One file holds the broker's messages and dead letters, the results, the control tables and
beat's state; the roles of one app share one connection (:class:`.connection.SQLiteConnection`).
"""

SCHEMA: tuple[str, ...] = (
    # -- broker (delivery_count: workers that died while running it; running: 2 or 3 while
    # the current lease runs it, 3 as an isolated suspect; strikes: deaths while isolated)
    """CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        visible_at REAL NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        lease INTEGER,
        message_id TEXT NOT NULL,
        running INTEGER NOT NULL DEFAULT 0,
        strikes INTEGER NOT NULL DEFAULT 0
    )""",
    # The claim walks this index in delivery order and filters on visible_at without touching
    # the table, stopping after `limit` ready rows.
    "CREATE INDEX IF NOT EXISTS messages_order ON messages (queue, priority DESC, id, visible_at)",
    # "Is anything ready, and when is the next one due?" in O(log n), for idle polling.
    "CREATE INDEX IF NOT EXISTS messages_due ON messages (queue, visible_at)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        body BLOB NOT NULL,
        reason TEXT NOT NULL,
        time REAL NOT NULL,
        message_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue, id)",
    # -- result backend
    "CREATE TABLE IF NOT EXISTS results ("
    " task_id TEXT PRIMARY KEY, data BLOB NOT NULL, expires_at REAL)",
    "CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at)"
    " WHERE expires_at IS NOT NULL",
    # add_member: a set's size and deadline, and its members (sizes are kept, not counted).
    "CREATE TABLE IF NOT EXISTS member_sets ("
    " key TEXT PRIMARY KEY, size INTEGER NOT NULL, expires_at REAL)",
    "CREATE INDEX IF NOT EXISTS member_sets_expiry ON member_sets (expires_at)"
    " WHERE expires_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS members ("
    " key TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (key, member)) WITHOUT ROWID",
    # Locks.lock: unique tasks' locks and idempotent sends' marks (aqueue.transports.base.Locks).
    "CREATE TABLE IF NOT EXISTS locks ("
    " key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID",
    # -- control
    "CREATE TABLE IF NOT EXISTS control_messages ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, data BLOB NOT NULL,"
    " time REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS control_messages_time ON control_messages (time)",
    "CREATE TABLE IF NOT EXISTS control_state ("
    " tbl TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires_at REAL,"
    " PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS control_versions (tbl TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rate_buckets ("
    " name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL)",
    # -- beat
    "CREATE TABLE IF NOT EXISTS beat_entries ("
    " app TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (app, name))",
    "CREATE TABLE IF NOT EXISTS beat_last ("
    " app TEXT NOT NULL, name TEXT NOT NULL, tick INTEGER NOT NULL, PRIMARY KEY (app, name))",
    "CREATE TABLE IF NOT EXISTS beat_claims ("
    " app TEXT NOT NULL, name TEXT NOT NULL, tick INTEGER NOT NULL, done INTEGER NOT NULL,"
    " token TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (app, name, tick))",
    "CREATE INDEX IF NOT EXISTS beat_claims_expiry ON beat_claims (expires_at)",
)


def upsert(table: str, key: str, columns: tuple[str, ...]) -> str:
    """The statement that inserts a row of ``columns`` into ``table``, or sets the other columns
    of the row with the same ``key`` (SQLite's ``INSERT ... ON CONFLICT DO UPDATE``). Made once,
    from fixed names, at import."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )
