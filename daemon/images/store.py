"""The image store: image records and their names, in the metadata DB.

An image is identified by its config digest (the image ID, as the kubelet and
docker see it). It has any number of names; a name is either a tag reference
(`docker.io/library/busybox:latest`) or a digest reference
(`docker.io/library/busybox@sha256:...`), and each name remembers the digest
it resolved to at pull time (an index or a manifest): that gives RepoDigests
(`repo@digest`) as the kubelet expects. A name belongs to one image at a time;
pulling a tag that moved re-points the name, and an image left with no names
is deleted (its content then goes at the next GC).

The record pins the image's content (manifest, config, layers) and its top
snapshot chain ID, which GC treats as roots.

    store = ImageStore(db, content)
    image = store.get("busybox")            # by name, ID, digest or repo digest
    config = store.config(image)            # the OCI image config (dict)
    image.chain_id                          # snapshot to prepare a rootfs on
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyctr.daemon.errors import InvalidArgument, NotFound
from pyctr.daemon.images.content import ContentStore
from pyctr.daemon.images.reference import Reference, is_digest, is_image_id, parse
from pyctr.daemon.metadata import Metadata

log = logging.getLogger(__name__)

MAX_CONFIG = 8 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    layers TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    platform TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS image_names (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    repository TEXT NOT NULL,
    target_digest TEXT NOT NULL,
    target_media_type TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS image_names_image ON image_names(image_id);
CREATE INDEX IF NOT EXISTS image_names_repo ON image_names(repository);
"""


@dataclass(frozen=True)
class LayerRecord:
    digest: str
    size: int
    media_type: str
    diff_id: str


@dataclass(frozen=True)
class ImageName:
    name: str  # repo:tag or repo@digest
    repository: str
    target_digest: str  # what the name resolved to: an index or a manifest
    target_media_type: str
    manifest_digest: str  # the platform manifest chosen under the target

    @property
    def is_tag(self) -> bool:
        return "@" not in self.name


@dataclass
class Image:
    id: str  # config digest
    manifest_digest: str
    manifest_media_type: str
    layers: list[LayerRecord]
    chain_id: str
    size: int
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    platform: str = ""
    created: float = 0.0
    updated: float = 0.0
    pinned: bool = False
    names: list[ImageName] = field(default_factory=list)

    @property
    def repo_tags(self) -> list[str]:
        return sorted(n.name for n in self.names if n.is_tag)

    @property
    def repo_digests(self) -> list[str]:
        return sorted({f"{n.repository}@{n.target_digest}" for n in self.names})

    @property
    def content_digests(self) -> set[str]:
        """Blobs this record pins directly (GC also walks the names' targets)."""
        out = {self.id, self.manifest_digest}
        out.update(layer.digest for layer in self.layers)
        for n in self.names:
            out.update((n.target_digest, n.manifest_digest))
        return out


# An event hook: (action, image_id, name); action is create/update/delete.
EventHook = Callable[[str, str, str], None]


class ImageStore:
    def __init__(self, db: Metadata, content: ContentStore, on_event: EventHook | None = None):
        self.db = db
        self.content = content
        self.on_event = on_event
        db.migrate(_SCHEMA)

    # -- reading -----------------------------------------------------------------

    def _load(self, rows: list[Any]) -> list[Image]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        names: dict[str, list[ImageName]] = {i: [] for i in ids}
        for n in self.db.query(
            f"SELECT * FROM image_names WHERE image_id IN ({marks}) ORDER BY name", tuple(ids)
        ):
            names[n["image_id"]].append(
                ImageName(
                    n["name"],
                    n["repository"],
                    n["target_digest"],
                    n["target_media_type"],
                    n["manifest_digest"],
                )
            )
        return [
            Image(
                id=r["id"],
                manifest_digest=r["manifest_digest"],
                manifest_media_type=r["manifest_media_type"],
                layers=[LayerRecord(**x) for x in json.loads(r["layers"])],
                chain_id=r["chain_id"],
                size=r["size"],
                user=r["user"],
                labels=json.loads(r["labels"]),
                platform=r["platform"],
                created=r["created"],
                updated=r["updated"],
                pinned=bool(r["pinned"]),
                names=names[r["id"]],
            )
            for r in rows
        ]

    def list(self) -> list[Image]:
        return self._load(self.db.query("SELECT * FROM images ORDER BY created"))

    def _by_id(self, image_id: str) -> Image | None:
        found = self._load(self.db.query("SELECT * FROM images WHERE id = ?", (image_id,)))
        return found[0] if found else None

    def find(self, ref: str) -> Image | None:
        """The image `ref` names, or None. `ref` may be an image ID (with or
        without `sha256:`), a name (normalised: `busybox` works), a digest
        reference, or a repo digest."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("image reference is empty")
        if is_digest(ref):
            return self._by_id(ref) or self._by_target(None, ref)
        if is_image_id(ref):
            return self._by_id("sha256:" + ref)
        r = parse(ref)
        if r.digest:
            return self._by_target(r, r.digest)
        rows = self.db.query("SELECT image_id FROM image_names WHERE name = ?", (r.tagged_name,))
        return self._by_id(rows[0]["image_id"]) if rows else None

    def _by_target(self, r: Reference | None, digest: str) -> Image | None:
        if r is not None:
            rows = self.db.query(
                "SELECT image_id FROM image_names WHERE repository = ? AND "
                "(target_digest = ? OR manifest_digest = ?) LIMIT 1",
                (r.repository, digest, digest),
            )
        else:
            rows = self.db.query(
                "SELECT image_id FROM image_names WHERE target_digest = ? OR manifest_digest = ? "
                "LIMIT 1",
                (digest, digest),
            )
        return self._by_id(rows[0]["image_id"]) if rows else None

    def get(self, ref: str) -> Image:
        image = self.find(ref)
        if image is None:
            raise NotFound(f"image {ref!r} not found")
        return image

    def config(self, image: Image) -> dict[str, Any]:
        """The image's OCI config document (verified when it was stored)."""
        return json.loads(self.content.read(image.id, MAX_CONFIG))

    def manifest(self, image: Image) -> dict[str, Any]:
        return json.loads(self.content.read(image.manifest_digest, 4 << 20))

    # -- writing -----------------------------------------------------------------

    def commit(self, image: Image, names: builtins.list[ImageName]) -> Image:
        """Store or refresh the record and point `names` at it, in one transaction."""
        now = time.time()
        events: list[tuple[str, str, str]] = []
        orphans: list[str] = []
        with self.db.tx() as c:
            old = c.execute("SELECT created FROM images WHERE id = ?", (image.id,)).fetchone()
            image.created = old["created"] if old else now
            image.updated = now
            c.execute(
                # An upsert, not REPLACE: a REPLACE deletes the row first,
                # which would cascade to the image's other names.
                "INSERT INTO images (id, manifest_digest, manifest_media_type, layers, "
                "chain_id, size, user, labels, platform, created, updated, pinned) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "manifest_digest = excluded.manifest_digest, "
                "manifest_media_type = excluded.manifest_media_type, layers = excluded.layers, "
                "chain_id = excluded.chain_id, size = excluded.size, user = excluded.user, "
                "labels = excluded.labels, platform = excluded.platform, "
                "updated = excluded.updated",
                (
                    image.id,
                    image.manifest_digest,
                    image.manifest_media_type,
                    json.dumps([layer.__dict__ for layer in image.layers]),
                    image.chain_id,
                    image.size,
                    image.user,
                    json.dumps(image.labels),
                    image.platform,
                    image.created,
                    image.updated,
                    int(image.pinned),
                ),
            )
            for n in names:
                prev = c.execute(
                    "SELECT image_id FROM image_names WHERE name = ?", (n.name,)
                ).fetchone()
                c.execute(
                    "INSERT OR REPLACE INTO image_names (name, image_id, repository, "
                    "target_digest, target_media_type, manifest_digest, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        n.name,
                        image.id,
                        n.repository,
                        n.target_digest,
                        n.target_media_type,
                        n.manifest_digest,
                        now,
                    ),
                )
                if prev is None:
                    events.append(("create", image.id, n.name))
                else:
                    events.append(("update", image.id, n.name))
                    if prev["image_id"] != image.id:
                        orphans.append(prev["image_id"])
            for other in orphans:
                events += self._drop_if_nameless(c, other)
        self._publish(events)
        return self.get(image.id)

    def _drop_if_nameless(self, c: Any, image_id: str) -> builtins.list[tuple[str, str, str]]:
        left = c.execute(
            "SELECT 1 FROM image_names WHERE image_id = ? LIMIT 1", (image_id,)
        ).fetchone()
        if left:
            return []
        c.execute("DELETE FROM images WHERE id = ?", (image_id,))
        return [("delete", image_id, "")]

    def tag(self, ref: str, new_name: str) -> Image:
        """Give the image `ref` names another tag (`repo:tag`)."""
        image = self.get(ref)
        r = parse(new_name)
        if r.digest:
            raise InvalidArgument(f"cannot tag with a digest reference {new_name!r}")
        base = next((n for n in image.names), None)
        target = base.target_digest if base else image.manifest_digest
        target_mt = base.target_media_type if base else image.manifest_media_type
        name = ImageName(r.tagged_name, r.repository, target, target_mt, image.manifest_digest)
        events: list[tuple[str, str, str]] = []
        with self.db.tx() as c:
            prev = c.execute(
                "SELECT image_id FROM image_names WHERE name = ?", (name.name,)
            ).fetchone()
            c.execute(
                "INSERT OR REPLACE INTO image_names (name, image_id, repository, target_digest, "
                "target_media_type, manifest_digest, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name.name,
                    image.id,
                    name.repository,
                    name.target_digest,
                    name.target_media_type,
                    name.manifest_digest,
                    time.time(),
                ),
            )
            events.append(("update" if prev else "create", image.id, name.name))
            if prev and prev["image_id"] != image.id:
                events += self._drop_if_nameless(c, prev["image_id"])
        self._publish(events)
        return self.get(image.id)

    def remove(self, ref: str) -> builtins.list[str]:
        """Remove what `ref` names; returns the IDs of images deleted outright.

        By image ID: the image with all its names. By name or repo digest:
        that name only; the image goes once its last name goes. Unknown refs
        are not an error (removal is idempotent); an invalid one is.
        """
        events: list[tuple[str, str, str]] = []
        deleted: list[str] = []
        image_id = ""
        names: list[str] = []
        if is_digest(ref) or is_image_id(ref):
            image_id = ref if is_digest(ref) else "sha256:" + ref
            if self._by_id(image_id) is None:
                image = self._by_target(None, image_id)
                image_id = image.id if image else ""
        else:
            r = parse(ref)
            if r.digest:
                rows = self.db.query(
                    "SELECT name FROM image_names WHERE repository = ? AND "
                    "(target_digest = ? OR manifest_digest = ?)",
                    (r.repository, r.digest, r.digest),
                )
                names = [row["name"] for row in rows]
            else:
                names = [r.tagged_name]
        with self.db.tx() as c:
            if image_id and c.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount:
                events.append(("delete", image_id, ""))
                deleted.append(image_id)
            owners = set()
            for name in names:
                row = c.execute(
                    "SELECT image_id FROM image_names WHERE name = ?", (name,)
                ).fetchone()
                if row is None:
                    continue
                c.execute("DELETE FROM image_names WHERE name = ?", (name,))
                events.append(("update", row["image_id"], name))
                owners.add(row["image_id"])
            for owner in owners:
                gone = self._drop_if_nameless(c, owner)
                events += gone
                deleted += [e[1] for e in gone]
        self._publish(events)
        return deleted

    def _publish(self, events: builtins.list[tuple[str, str, str]]) -> None:
        if self.on_event is None:
            return
        for action, image_id, name in events:
            try:
                self.on_event(action, image_id, name)
            except Exception:  # an event consumer must never break the store
                log.exception("image event hook failed")
