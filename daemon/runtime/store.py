"""The container store: one row per container (and per pod sandbox) in meta.db.

A record holds what was asked (image, spec, labels, CRI metadata) and what
happened (status, pid, times, exit code, reason); its shape is the typed
record of daemon/runtime/records.py. The runtime manager is the only writer
of the status fields; everything reads through `get`/`list`. Times are
nanoseconds since the epoch, as the CRI reports them.

The table carries a schema version (the `schema_versions` table of
daemon/metadata.py). Opening a table of an older version migrates it in one
transaction: a crash part-way leaves the old rows as they were, and the next
open does the whole migration again.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import re
import secrets
import sqlite3
from typing import Any

from pyctr.daemon.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyctr.daemon.metadata import Metadata
from pyctr.daemon.runtime.records import COLUMNS, Container, R, from_row, from_v0, to_row

log = logging.getLogger("pyctr.store")

# 0: the record's shape in an untyped `extra` column (pyctr up to 149991d).
# 1: the typed record (records.py), kind-specific fields in `details`.
SCHEMA_VERSION = 1

TABLE = """
CREATE TABLE {name} (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,           -- "container" or "sandbox"
    sandbox_id  TEXT NOT NULL DEFAULT '',
    image       TEXT NOT NULL DEFAULT '',
    image_id    TEXT NOT NULL DEFAULT '',
    snapshot    TEXT NOT NULL DEFAULT '',
    spec        TEXT NOT NULL DEFAULT '{{}}',
    labels      TEXT NOT NULL DEFAULT '{{}}',
    annotations TEXT NOT NULL DEFAULT '{{}}',
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    pid         INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER NOT NULL DEFAULT 0,
    exit_code   INTEGER NOT NULL DEFAULT 0,
    reason      TEXT NOT NULL DEFAULT '',
    message     TEXT NOT NULL DEFAULT '',
    details     TEXT NOT NULL DEFAULT '{{}}'  -- records.py: the kind's own fields, JSON
)
"""
INDEX = "CREATE INDEX IF NOT EXISTS containers_sandbox ON containers(sandbox_id)"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
ID_RE = re.compile(r"^[0-9a-f]{1,64}$")


def new_id() -> str:
    return secrets.token_hex(32)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid name {name[:80]!r}: use letters, digits, '_', '.', '-' (at most 253)"
        )
    return name


def open_table(db: Metadata) -> None:
    """Create the table, or bring an older one to SCHEMA_VERSION, in one transaction."""
    with db.tx() as tx:
        version = db.schema_version(tx, "containers")
        columns = [r["name"] for r in tx.execute("PRAGMA table_info(containers)")]
        if version is None and columns:
            version = 0 if "extra" in columns else SCHEMA_VERSION
        if version is None:
            tx.execute(TABLE.format(name="containers"))
        elif version > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"the container table is of schema version {version}, newer than this "
                f"pyctr's {SCHEMA_VERSION}: run the pyctr that wrote it"
            )
        elif version < 1:
            _migrate_v0(tx)
        tx.execute(INDEX)
        db.set_schema_version(tx, "containers", SCHEMA_VERSION)


def _migrate_v0(tx: sqlite3.Connection) -> None:
    """Rewrite every row of the `extra` shape as a typed record (a new table,
    then swapped in: SQLite's way of changing columns)."""
    rows = tx.execute("SELECT * FROM containers").fetchall()
    tx.execute("DROP TABLE IF EXISTS containers_v1")
    tx.execute(TABLE.format(name="containers_v1"))
    for row in rows:
        _insert(tx, to_row(from_v0(row)), table="containers_v1")
    tx.execute("DROP TABLE containers")
    tx.execute("ALTER TABLE containers_v1 RENAME TO containers")
    log.info("migrated %d container records to schema version 1", len(rows))


def _insert(tx: sqlite3.Connection, row: dict[str, Any], table: str = "containers") -> None:
    cols = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    tx.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row)


class ContainerStore:
    def __init__(self, db: Metadata) -> None:
        self.db = db
        open_table(db)

    def add(self, c: Container) -> None:
        row = to_row(c)
        with self.db.tx() as tx:
            taken = tx.execute(
                "SELECT id FROM containers WHERE name = ? OR id = ?", (c.name, c.id)
            ).fetchone()
            if taken:
                raise AlreadyExists(f"name {c.name!r} is in use by {taken['id'][:12]}")
            _insert(tx, row)

    def update(self, cid: str, **fields: Any) -> Container:
        """Change fields of a record (any of its type's); a status change must
        be one the state machine allows."""
        with self.db.tx() as tx:
            row = tx.execute("SELECT * FROM containers WHERE id = ?", (cid,)).fetchone()
            if row is None:
                raise NotFound(f"container {cid} not found")
            old = from_row(row)
            new = dataclasses.replace(old, **fields)
            if new.status != old.status and not old.status.can_become(new.status):
                raise FailedPrecondition(
                    f"container {cid[:12]} is {old.status}; it cannot become {new.status}"
                )
            values = to_row(new)
            # Only what changed: the spec (large) is encoded but not rewritten.
            own = set(fields) - set(COLUMNS)  # fields kept in `details`
            changed = [k for k in values if k in fields or (k == "details" and own)]
            sets = ", ".join(f"{k} = :{k}" for k in changed) or "id = id"
            tx.execute(f"UPDATE containers SET {sets} WHERE id = :id", values)
        return new

    def delete(self, cid: str) -> None:
        with self.db.tx() as tx:
            tx.execute("DELETE FROM containers WHERE id = ?", (cid,))

    def get(self, cid: str) -> Container:
        rows = self.db.query("SELECT * FROM containers WHERE id = ?", (cid,))
        if not rows:
            raise NotFound(f"container {cid} not found")
        return from_row(rows[0])

    def get_as(self, cid: str, cls: type[R]) -> R:
        """The record `cid` if it is a `cls`; NotFound otherwise."""
        c = self.get(cid)
        if not isinstance(c, cls):
            what = "pod sandbox" if cls.KIND == "sandbox" else "container"
            raise NotFound(f"{what} {cid} not found")
        return c

    def resolve(self, ref: str, kind: str | None = None) -> Container:
        """By full ID, unique ID prefix, or name (as crictl and docker users expect)."""
        if not ref or len(ref) > 256 or "\0" in ref:
            raise NotFound(f"container {ref[:80]!r} not found")
        what = "pod sandbox" if kind == "sandbox" else "container"
        rows = []
        if ID_RE.match(ref):
            rows = self.db.query(
                "SELECT * FROM containers WHERE id >= ? AND id < ? LIMIT 2", (ref, ref + "g")
            )
            if len(rows) > 1 and rows[0]["id"] != ref:
                raise InvalidArgument(f"{what} ID prefix {ref!r} is ambiguous")
        if not rows:
            rows = self.db.query("SELECT * FROM containers WHERE name = ?", (ref,))
        if not rows or (kind and rows[0]["kind"] != kind):
            raise NotFound(f"{what} {ref!r} not found")
        return from_row(rows[0])

    def list(self, kind: str | None = None, sandbox_id: str | None = None) -> list[Container]:
        sql, params = "SELECT * FROM containers WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if sandbox_id is not None:
            sql += " AND sandbox_id = ?"
            params.append(sandbox_id)
        return [from_row(r) for r in self.db.query(sql + " ORDER BY created_at", tuple(params))]

    def list_of(self, cls: type[R], sandbox_id: str | None = None) -> builtins.list[R]:
        """The records that are `cls`es (in creation order)."""
        return [c for c in self.list(cls.KIND, sandbox_id) if isinstance(c, cls)]
