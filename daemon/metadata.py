"""The metadata database: one SQLite file (WAL) under the root dir.

Every store (images, snapshots, containers, leases) keeps its tables here and
writes them inside `Metadata.tx()`, so a crash at any point leaves the database
at the last committed transaction. Each store creates its own tables with
`Metadata.migrate()` when it is constructed; a store whose rows changed shape
records its schema version in `schema_versions` and migrates older rows in
one transaction (see daemon/runtime/store.py).

One connection is shared by the daemon's threads; a lock serialises use of it.
SQLite calls on this small database take microseconds, so handlers may call
it directly from the event loop.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path


class Metadata:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss, not just a crash.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        path.chmod(0o600)

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except BaseException:
                    # A full disk fails the COMMIT; SQLite may or may not have
                    # rolled back already, so make sure the connection is out of it.
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    raise
            finally:
                self._depth = 0

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """A read outside any write transaction (sees the last commit)."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def migrate(self, schema: str) -> None:
        """Create tables and indexes (`CREATE ... IF NOT EXISTS` statements)."""
        with self._lock:
            self._conn.executescript(schema)

    def schema_version(self, tx: sqlite3.Connection, table: str) -> int | None:
        """The version `set_schema_version` recorded for `table`, None if none was."""
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions"
            " (name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = tx.execute("SELECT version FROM schema_versions WHERE name = ?", (table,)).fetchone()
        return None if row is None else int(row["version"])

    def set_schema_version(self, tx: sqlite3.Connection, table: str, version: int) -> None:
        tx.execute(
            "INSERT INTO schema_versions (name, version) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET version = excluded.version",
            (table, version),
        )

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it: gives its space back
        (a full disk's cleanup needs that room for its own deletes)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
