"""What both backends share: the snapshot table, the lifecycle, reconciliation.

Layout under the snapshotter's root:

    root/snapshots/<id>/fs      the snapshot's tree (overlay: the upper dir)
    root/snapshots/<id>/work    overlay work dir, active snapshots only
    root/snapshots/new-<uuid>   a snapshot being created, not yet in the DB

Ordering rules that keep disk and database consistent across a crash:
a new snapshot is built in a `new-*` dir first and renamed to its id inside
the transaction that inserts its row; a removed snapshot's row is deleted
before its dir. So at any crash point the only leftovers are dirs the
database does not know, which `reconcile()` deletes.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from pyctr.snapshotter.base import (
    EXTRACT_PREFIX,
    Info,
    Kind,
    LayerTarget,
    MetadataStore,
    Usage,
    check_key,
    check_labels,
)
from pyctr.snapshotter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyctr.snapshotter.fsutil import disk_usage, remove_tree
from pyctr.snapshotter.mount import Mount

log = logging.getLogger("pyctr.snapshotter")

SCHEMA = """
CREATE TABLE IF NOT EXISTS snap_snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent_id INTEGER REFERENCES snap_snapshots(id),
    kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    labels TEXT NOT NULL DEFAULT '{}',
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size_bytes INTEGER,
    inodes INTEGER
);
CREATE INDEX IF NOT EXISTS snap_snapshots_parent ON snap_snapshots(parent_id);
CREATE TABLE IF NOT EXISTS snap_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_SELECT = (
    "SELECT s.*, p.key AS parent_key FROM snap_snapshots s "
    "LEFT JOIN snap_snapshots p ON s.parent_id = p.id"
)


def _info(row: sqlite3.Row) -> Info:
    return Info(
        key=row["key"],
        parent=row["parent_key"],
        kind=Kind(row["kind"]),
        labels=json.loads(row["labels"]),
        created_ns=row["created_ns"],
        updated_ns=row["updated_ns"],
    )


class DirSnapshotter:
    """The Snapshotter protocol over one directory per snapshot.

    Subclasses say how a new snapshot's dir is populated, which mounts make
    it visible and how the applier writes a layer into it.
    """

    backend = ""
    independent_layers = False

    def __init__(self, db: MetadataStore, root: Path) -> None:
        if "," in str(root) or ":" in str(root):
            # They would split mount options / overlay lowerdir lists.
            raise InvalidArgument(f"snapshotter root {root} must not contain ',' or ':'")
        self.db = db
        self.root = root
        self.snapshots = root / "snapshots"
        # 0700: layers carry setuid binaries that no local user may reach.
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.snapshots.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.snapshots, 0o700)
        db.migrate(SCHEMA)
        with db.tx() as c:
            stored = c.execute("SELECT value FROM snap_meta WHERE name = 'backend'").fetchone()
            if stored is None:
                c.execute("INSERT INTO snap_meta VALUES ('backend', ?)", (self.backend,))
            elif stored["value"] != self.backend:
                if c.execute("SELECT 1 FROM snap_snapshots LIMIT 1").fetchone():
                    raise FailedPrecondition(
                        f"snapshots under {root} were made by the {stored['value']} "
                        f"snapshotter; cannot open them as {self.backend}"
                    )
                c.execute("UPDATE snap_meta SET value = ? WHERE name = 'backend'", (self.backend,))

    # -- backend hooks ---------------------------------------------------------

    def _populate(self, new: Path, kind: Kind, parent: sqlite3.Row | None) -> None:
        raise NotImplementedError

    def _mounts(self, row: sqlite3.Row) -> list[Mount]:
        raise NotImplementedError

    def _after_commit(self, sid: int) -> None:
        """Drop what a committed snapshot no longer needs (a crash may skip it)."""

    # -- lookups ----------------------------------------------------------------

    def _dir(self, sid: int) -> Path:
        return self.snapshots / str(sid)

    def _fs(self, sid: int) -> Path:
        return self.snapshots / str(sid) / "fs"

    def _row(self, key: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row:
        check_key(key)
        sql = f"{_SELECT} WHERE s.key = ?"
        rows = conn.execute(sql, (key,)).fetchall() if conn else self.db.query(sql, (key,))
        if not rows:
            raise NotFound(f"snapshot {key!r} not found")
        return rows[0]

    def _committed(self, key: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row:
        row = self._row(key, conn)
        if row["kind"] != Kind.COMMITTED:
            raise FailedPrecondition(f"parent snapshot {key!r} is {row['kind']}, not committed")
        return row

    def _chain(self, sid: int | None) -> list[int]:
        """Ids from `sid` down to the base layer."""
        if sid is None:
            return []
        rows = self.db.query(
            "WITH RECURSIVE chain(id, parent_id, depth) AS ("
            " SELECT id, parent_id, 0 FROM snap_snapshots WHERE id = ?"
            " UNION ALL SELECT s.id, s.parent_id, c.depth + 1"
            " FROM snap_snapshots s JOIN chain c ON s.id = c.parent_id)"
            " SELECT id FROM chain ORDER BY depth",
            (sid,),
        )
        return [r["id"] for r in rows]

    # -- the protocol -------------------------------------------------------------

    def prepare(self, key: str, parent: str | None = None) -> list[Mount]:
        return self._mounts(self._create(key, parent, Kind.ACTIVE))

    def view(self, key: str, parent: str | None = None) -> list[Mount]:
        return self._mounts(self._create(key, parent, Kind.VIEW))

    def _create(self, key: str, parent: str | None, kind: Kind) -> sqlite3.Row:
        check_key(key)
        parent_row = self._committed(parent) if parent is not None else None
        if self.db.query("SELECT 1 FROM snap_snapshots WHERE key = ?", (key,)):
            raise AlreadyExists(f"snapshot {key!r} already exists")
        new = self.snapshots / f"new-{uuid.uuid4().hex}"
        final: Path | None = None
        try:
            new.mkdir(mode=0o700)
            self._populate(new, kind, parent_row)
            now = time.time_ns()
            with self.db.tx() as c:
                if c.execute("SELECT 1 FROM snap_snapshots WHERE key = ?", (key,)).fetchone():
                    raise AlreadyExists(f"snapshot {key!r} already exists")
                parent_id = None
                if parent is not None:  # may have been removed while we copied
                    parent_id = self._committed(parent, c)["id"]
                cur = c.execute(
                    "INSERT INTO snap_snapshots (key, parent_id, kind, created_ns, updated_ns)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (key, parent_id, str(kind), now, now),
                )
                sid = cur.lastrowid
                assert sid is not None
                final = self._dir(sid)
                os.rename(new, final)
                return self._row(key, c)
        except BaseException:
            remove_tree(new)
            if final is not None:  # renamed, then the transaction failed
                remove_tree(final)
            raise

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        self._commit(name, key, labels, reparent=False, parent=None)

    def _commit(
        self,
        name: str,
        key: str,
        labels: Mapping[str, str] | None,
        *,
        reparent: bool,
        parent: str | None,
    ) -> None:
        check_key(name, "name")
        labels_json = check_labels(labels) if labels is not None else None
        row = self._row(key)
        if row["kind"] != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {row['kind']}; only active ones commit")
        # Measured once here: a committed tree never changes again.
        used = disk_usage(self._fs(row["id"]))
        now = time.time_ns()
        with self.db.tx() as c:
            again = self._row(key, c)
            if again["id"] != row["id"] or again["kind"] != Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} changed during commit")
            if c.execute("SELECT 1 FROM snap_snapshots WHERE key = ?", (name,)).fetchone():
                raise AlreadyExists(f"snapshot {name!r} already exists")
            parent_id = row["parent_id"]
            if reparent:
                parent_id = self._committed(parent, c)["id"] if parent is not None else None
            c.execute(
                "UPDATE snap_snapshots SET key = ?, kind = 'committed', parent_id = ?,"
                " labels = COALESCE(?, labels), created_ns = ?, updated_ns = ?,"
                " size_bytes = ?, inodes = ? WHERE id = ?",
                (name, parent_id, labels_json, now, now, used.size_bytes, used.inodes, row["id"]),
            )
        self._after_commit(row["id"])

    def remove(self, key: str) -> None:
        with self.db.tx() as c:
            row = self._row(key, c)
            children = c.execute(
                "SELECT key FROM snap_snapshots WHERE parent_id = ? LIMIT 3", (row["id"],)
            ).fetchall()
            if children:
                names = ", ".join(repr(r["key"]) for r in children)
                raise FailedPrecondition(
                    f"snapshot {key!r} has children ({names}...); remove them first"
                )
            c.execute("DELETE FROM snap_snapshots WHERE id = ?", (row["id"],))
        remove_tree(self._dir(row["id"]))

    def stat(self, key: str) -> Info:
        return _info(self._row(key))

    def update(self, key: str, labels: Mapping[str, str]) -> Info:
        """Replace the snapshot's labels (all of them)."""
        labels_json = check_labels(labels)
        with self.db.tx() as c:
            row = self._row(key, c)
            c.execute(
                "UPDATE snap_snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
                (labels_json, time.time_ns(), row["id"]),
            )
            return _info(self._row(key, c))

    def usage(self, key: str) -> Usage:
        row = self._row(key)
        if row["kind"] == Kind.COMMITTED and row["size_bytes"] is not None:
            return Usage(row["size_bytes"], row["inodes"])
        return disk_usage(self._fs(row["id"]))

    def walk(self) -> Iterator[Info]:
        rows = self.db.query(f"{_SELECT} ORDER BY s.id")
        return iter([_info(r) for r in rows])

    def mounts(self, key: str) -> list[Mount]:
        row = self._row(key)
        if row["kind"] == Kind.COMMITTED:
            raise FailedPrecondition(
                f"snapshot {key!r} is committed; make a view or an active snapshot of it"
            )
        return self._mounts(row)

    def fs_usage(self) -> Usage:
        """Everything under snapshots/: committed sizes as recorded at commit
        (they never change), active and view dirs measured now. Cheap enough
        for the kubelet's periodic ImageFsInfo on a node with many images."""
        total = _dir_usage(self.snapshots)
        rows = self.db.query("SELECT id, kind, size_bytes, inodes FROM snap_snapshots")
        for r in rows:
            if r["kind"] == Kind.COMMITTED and r["size_bytes"] is not None:
                # + the snapshot dir holding fs/
                total += Usage(r["size_bytes"], r["inodes"]) + _dir_usage(self._dir(r["id"]))
            else:
                total += disk_usage(self._dir(r["id"]))
        return total

    # -- the applier's entry points ---------------------------------------------

    def prepare_layer(self, key: str, parent: str | None) -> LayerTarget:
        row = self._create(key, parent, Kind.ACTIVE)
        return LayerTarget(key, self._fs(row["id"]), "delete")

    def commit_layer(
        self, name: str, key: str, parent: str | None, labels: Mapping[str, str]
    ) -> None:
        if self.stat(key).parent != parent:
            raise FailedPrecondition(f"snapshot {key!r} was not prepared on {parent!r}")
        self.commit(name, key, labels)

    def lower_dirs(self, name: str | None) -> list[Path]:
        """The dirs whose union is snapshot `name`'s tree, top first."""
        if name is None:
            return []
        return [self._fs(sid) for sid in self._chain(self._committed(name)["id"])]

    # -- crash recovery -----------------------------------------------------------

    def reconcile(self) -> None:
        """Bring disk and database back in line after a crash; call at start."""
        rows = self.db.query("SELECT id, key, kind, parent_id FROM snap_snapshots ORDER BY id")
        doomed: set[int] = set()
        for r in rows:
            if r["kind"] == Kind.ACTIVE and r["key"].startswith(EXTRACT_PREFIX):
                log.info("snapshotter: removing interrupted extraction %s", r["key"])
                doomed.add(r["id"])
            elif not self._fs(r["id"]).is_dir():
                log.warning(
                    "snapshotter: %s snapshot %s lost its directory; removing it and its children",
                    r["kind"],
                    r["key"],
                )
                doomed.add(r["id"])
        # Children of anything removed go too: their tree is incomplete.
        # (Not ordered by id: an overlay layer may be extracted, and so get
        # its id, before its parent.)
        grew = True
        while grew:
            grew = False
            for r in rows:
                if r["parent_id"] in doomed and r["id"] not in doomed:
                    doomed.add(r["id"])
                    grew = True
        if doomed:
            parents = {r["id"]: r["parent_id"] for r in rows}
            with self.db.tx() as c:
                for sid in _children_first(doomed, parents):
                    c.execute("DELETE FROM snap_snapshots WHERE id = ?", (sid,))
        live = {str(r["id"]) for r in rows if r["id"] not in doomed}
        for entry in os.listdir(self.snapshots):
            if entry not in live:
                log.info("snapshotter: removing orphan directory snapshots/%s", entry)
                remove_tree(self.snapshots / entry)
        for r in rows:
            if r["id"] not in doomed and r["kind"] == Kind.COMMITTED:
                self._after_commit(r["id"])


def _dir_usage(path: Path) -> Usage:
    try:
        return Usage(os.lstat(path).st_blocks * 512, 1)
    except FileNotFoundError:
        return Usage(0, 0)


def _children_first(ids: set[int], parents: dict[int, int | None]) -> list[int]:
    """`ids` ordered so that every snapshot comes before its parent."""

    def depth(sid: int) -> int:
        d = 0
        while (sid := parents.get(sid)) is not None:  # type: ignore[assignment]
            d += 1
        return d

    return sorted(ids, key=depth, reverse=True)
