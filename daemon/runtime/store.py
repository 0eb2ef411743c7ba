"""The container store: one row per container (and per pod sandbox) in meta.db.

A record holds what was asked (image, spec, labels, CRI metadata) and what
happened (status, pid, times, exit code, reason). The runtime manager is the
only writer of the status fields; everything reads through `get`/`list`.
Times are nanoseconds since the epoch, as the CRI reports them.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from pyctr.daemon.errors import AlreadyExists, InvalidArgument, NotFound
from pyctr.daemon.metadata import Metadata

CREATED, RUNNING, EXITED, UNKNOWN = "created", "running", "exited", "unknown"

SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,           -- "container" or "sandbox"
    sandbox_id  TEXT NOT NULL DEFAULT '',
    image       TEXT NOT NULL DEFAULT '',
    image_id    TEXT NOT NULL DEFAULT '',
    snapshot    TEXT NOT NULL DEFAULT '',
    spec        TEXT NOT NULL DEFAULT '{}',
    labels      TEXT NOT NULL DEFAULT '{}',
    annotations TEXT NOT NULL DEFAULT '{}',
    extra       TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    pid         INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER NOT NULL DEFAULT 0,
    exit_code   INTEGER NOT NULL DEFAULT 0,
    reason      TEXT NOT NULL DEFAULT '',
    message     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS containers_sandbox ON containers(sandbox_id);
"""

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
ID_RE = re.compile(r"^[0-9a-f]{1,64}$")
_JSON_FIELDS = ("spec", "labels", "annotations", "extra")


def new_id() -> str:
    return secrets.token_hex(32)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid name {name[:80]!r}: use letters, digits, '_', '.', '-' (at most 253)"
        )
    return name


@dataclass
class Container:
    id: str
    name: str
    kind: str = "container"
    sandbox_id: str = ""
    image: str = ""
    image_id: str = ""
    snapshot: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # Request details a status answer needs (CRI metadata, log path, mounts...).
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: int = field(default_factory=time.time_ns)
    status: str = CREATED
    pid: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""

    def row(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in _JSON_FIELDS:
            out[key] = json.dumps(out[key], separators=(",", ":"))
        return out


def _from_row(row: Any) -> Container:
    data = dict(row)
    for key in _JSON_FIELDS:
        data[key] = json.loads(data[key])
    return Container(**data)


class ContainerStore:
    def __init__(self, db: Metadata) -> None:
        self.db = db
        db.migrate(SCHEMA)

    def add(self, c: Container) -> None:
        row = c.row()
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self.db.tx() as tx:
            taken = tx.execute(
                "SELECT id FROM containers WHERE name = ? OR id = ?", (c.name, c.id)
            ).fetchone()
            if taken:
                raise AlreadyExists(f"name {c.name!r} is in use by {taken['id'][:12]}")
            tx.execute(f"INSERT INTO containers ({cols}) VALUES ({marks})", row)

    def update(self, cid: str, **fields: Any) -> Container:
        for key in _JSON_FIELDS:
            if key in fields:
                fields[key] = json.dumps(fields[key], separators=(",", ":"))
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        with self.db.tx() as tx:
            tx.execute(f"UPDATE containers SET {sets} WHERE id = :_id", {**fields, "_id": cid})
            row = tx.execute("SELECT * FROM containers WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise NotFound(f"container {cid} not found")
        return _from_row(row)

    def delete(self, cid: str) -> None:
        with self.db.tx() as tx:
            tx.execute("DELETE FROM containers WHERE id = ?", (cid,))

    def get(self, cid: str) -> Container:
        rows = self.db.query("SELECT * FROM containers WHERE id = ?", (cid,))
        if not rows:
            raise NotFound(f"container {cid} not found")
        return _from_row(rows[0])

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
        return _from_row(rows[0])

    def list(self, kind: str | None = None, sandbox_id: str | None = None) -> list[Container]:
        sql, params = "SELECT * FROM containers WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if sandbox_id is not None:
            sql += " AND sandbox_id = ?"
            params.append(sandbox_id)
        return [_from_row(r) for r in self.db.query(sql + " ORDER BY created_at", tuple(params))]
