"""Leases: temporary GC roots for work in progress.

A pull creates a lease, adds to it every blob digest and snapshot chain ID it
is about to create or reuse, and deletes the lease once the image record (a
permanent root) is committed. While the lease lives, GC keeps what it names,
so a GC running in the middle of a pull cannot take the pull's blobs or
snapshots. A lease has an expiry so a crash cannot pin content forever: after
a daemon crash the lease of an interrupted pull keeps its partial downloads
(the `ingest` resources) for resume until it expires (`PULL_LEASE_TTL`); then
GC removes them.

Resources are (kind, key) pairs: kind is `content` (a digest), `snapshot` (a
snapshot key or chain ID) or `ingest` (an ingest ref).
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyctr.daemon.errors import InvalidArgument, NotFound
from pyctr.daemon.metadata import Metadata

KINDS = ("content", "snapshot", "ingest")
# Long enough for a slow pull of a large image, short enough that a crashed
# pull's partial content does not stay around for days.
PULL_LEASE_TTL = 6 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    expires REAL,
    labels TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS lease_resources (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (lease_id, kind, key)
);
CREATE INDEX IF NOT EXISTS lease_resources_kind ON lease_resources(kind, key);
"""


@dataclass(frozen=True)
class Lease:
    id: str
    created: float
    expires: float | None
    labels: dict[str, str] = field(default_factory=dict)


class Leases:
    def __init__(self, db: Metadata) -> None:
        self.db = db
        db.migrate(_SCHEMA)

    def create(
        self, ttl: float | None = None, labels: dict[str, str] | None = None, id: str = ""
    ) -> Lease:
        now = time.time()
        lease = Lease(id or uuid.uuid4().hex, now, now + ttl if ttl else None, labels or {})
        with self.db.tx() as c:
            c.execute(
                "INSERT INTO leases (id, created, expires, labels) VALUES (?, ?, ?, ?)",
                (lease.id, lease.created, lease.expires, json.dumps(lease.labels)),
            )
        return lease

    def add(self, lease_id: str, kind: str, keys: Iterable[str]) -> None:
        if kind not in KINDS:
            raise InvalidArgument(f"unknown lease resource kind {kind!r}")
        with self.db.tx() as c:
            if not c.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone():
                raise NotFound(f"lease {lease_id} not found")
            c.executemany(
                "INSERT OR IGNORE INTO lease_resources (lease_id, kind, key) VALUES (?, ?, ?)",
                [(lease_id, kind, k) for k in keys],
            )

    def delete(self, lease_id: str) -> None:
        with self.db.tx() as c:
            c.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def set_expiry(self, lease_id: str, expires: float | None) -> None:
        with self.db.tx() as c:
            c.execute("UPDATE leases SET expires = ? WHERE id = ?", (expires, lease_id))

    def list(self) -> list[Lease]:
        rows = self.db.query("SELECT * FROM leases ORDER BY created")
        return [Lease(r["id"], r["created"], r["expires"], json.loads(r["labels"])) for r in rows]

    def resources(self, lease_id: str) -> builtins.list[tuple[str, str]]:
        rows = self.db.query(
            "SELECT kind, key FROM lease_resources WHERE lease_id = ? ORDER BY kind, key",
            (lease_id,),
        )
        return [(r["kind"], r["key"]) for r in rows]

    def held(self, kind: str, now: float | None = None) -> set[str]:
        """Keys of `kind` held by any lease that has not expired."""
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT DISTINCT r.key FROM lease_resources r JOIN leases l ON l.id = r.lease_id "
            "WHERE r.kind = ? AND (l.expires IS NULL OR l.expires > ?)",
            (kind, now),
        )
        return {r["key"] for r in rows}

    def expire(self, now: float | None = None) -> int:
        """Delete expired leases; returns how many."""
        now = time.time() if now is None else now
        with self.db.tx() as c:
            cur = c.execute("DELETE FROM leases WHERE expires IS NOT NULL AND expires <= ?", (now,))
            return cur.rowcount
