"""The snapshot model: one small protocol every backend implements.

A snapshot is a directory tree identified by an opaque string key. There are
three kinds:

- *committed*: immutable, the result of `commit`; it can be the parent of
  other snapshots. Image layers are committed snapshots named by chain ID.
- *active*: writable, made by `prepare(key, parent)`; a container's rootfs.
- *view*: read-only, made by `view(key, parent)`; for looking inside an image.

Usage recipe (what the layer applier and the runtime do):

    mounts = sn.prepare("ctr-1", parent=image_top_chain_id)   # active, writable
    for m in mounts: m.mount(rootfs)         # or mount_all(mounts, rootfs)
    ... run the container ...
    unmount(rootfs); sn.remove("ctr-1")

    # building a layer by hand:
    sn.prepare("tmp", parent=prev); <write into the mounted tree>; sn.commit(new, "tmp")

Garbage collection: children first. `remove` refuses a snapshot that still
has children (FailedPrecondition), so a collector builds the tree from
`walk()` (each Info names its parent), and removes an unreferenced snapshot
only once none of its children remain: leaves first, then repeat. (Creation
order is not a safe proxy: an overlay layer may be extracted, and created,
before its parent.) Never remove an `extract-*` snapshot from a collector:
an unpack is using it; `reconcile()` clears interrupted ones at start.

Keys live in one namespace shared by all kinds (a committed name and an
active key cannot coincide). They are validated (`check_key`) but otherwise
opaque: on disk every snapshot is a directory named by a numeric id.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pyctr.snapshotter.errors import InvalidArgument
from pyctr.snapshotter.mount import Mount

MAX_KEY_BYTES = 1024
MAX_LABEL_BYTES = 4096  # key + value of one label
MAX_LABELS_BYTES = 64 * 1024  # all labels of one snapshot
EXTRACT_PREFIX = "extract-"  # keys of in-progress layer extractions
DIFF_ID_LABEL = "pyctr.io/diff-id"


class Kind(enum.StrEnum):
    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Info:
    key: str  # the name, for a committed snapshot
    parent: str | None
    kind: Kind
    labels: dict[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0

    @property
    def name(self) -> str:
        return self.key


@dataclass(frozen=True)
class Usage:
    size_bytes: int  # allocated disk blocks, in bytes (like du)
    inodes: int

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.size_bytes + other.size_bytes, self.inodes + other.inodes)


@dataclass(frozen=True)
class LayerTarget:
    """Where the applier writes one layer, and how it expresses deletions.

    `whiteouts` is "overlay" when `path` is an overlay upper dir that starts
    empty (deletions become whiteout devices and opaque xattrs) and "delete"
    when `path` is a full copy of the parent tree (deletions delete).
    """

    key: str
    path: Path
    whiteouts: str


class MetadataStore(Protocol):
    """The SQLite database the snapshotter keeps its tables in, shared with its host.

    pyctrd's `pyctr.daemon.metadata.Metadata` is one: the snapshotter's rows
    then commit in the same WAL file as the images that point at them.
    """

    def tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction (nested calls join the outer one)."""
        ...

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]: ...
    def migrate(self, schema: str) -> None: ...


class Snapshotter(Protocol):
    backend: str
    # True when a layer's directory does not depend on its parent's content,
    # so layers can be extracted in parallel and committed in order after.
    independent_layers: bool

    def prepare(self, key: str, parent: str | None = None) -> list[Mount]: ...
    def view(self, key: str, parent: str | None = None) -> list[Mount]: ...
    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None: ...
    def remove(self, key: str) -> None: ...
    def stat(self, key: str) -> Info: ...
    def update(self, key: str, labels: Mapping[str, str]) -> Info: ...
    def usage(self, key: str) -> Usage: ...
    def walk(self) -> Iterator[Info]: ...
    def mounts(self, key: str) -> list[Mount]: ...
    def fs_usage(self) -> Usage: ...
    def reconcile(self) -> None: ...

    # Used by the layer applier (pyctr.snapshotter.applier).
    def prepare_layer(self, key: str, parent: str | None) -> LayerTarget: ...
    def commit_layer(
        self, name: str, key: str, parent: str | None, labels: Mapping[str, str]
    ) -> None: ...
    def lower_dirs(self, name: str | None) -> list[Path]: ...


def check_key(key: object, what: str = "key") -> str:
    """A key is a non-empty str of at most MAX_KEY_BYTES UTF-8 bytes, no NUL."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"snapshot {what} must be a non-empty string")
    if "\0" in key:
        raise InvalidArgument(f"snapshot {what} {key[:80]!r} contains NUL")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"snapshot {what} {key[:80]!r} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(f"snapshot {what} is {size} bytes, more than {MAX_KEY_BYTES}")
    return key


def check_labels(labels: Mapping[str, str]) -> str:
    """Validate labels and return them as the JSON stored in the database."""
    total = 0
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument("snapshot labels must map non-empty strings to strings")
        if "\0" in k or "\0" in v:
            raise InvalidArgument(f"snapshot label {k[:80]!r} contains NUL")
        try:
            size = len(k.encode("utf-8")) + len(v.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"snapshot label {k[:80]!r} is not valid UTF-8") from None
        if size > MAX_LABEL_BYTES:
            raise InvalidArgument(f"snapshot label {k[:80]!r} is longer than {MAX_LABEL_BYTES}")
        total += size
    if total > MAX_LABELS_BYTES:
        raise InvalidArgument(f"snapshot labels exceed {MAX_LABELS_BYTES} bytes")
    return json.dumps(dict(sorted(labels.items())), ensure_ascii=False)


def _check_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or hexpart.strip("0123456789abcdef"):
        raise InvalidArgument(f"diff ID {digest!r} is not a sha256 digest")
    return digest


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Chain IDs, per the OCI image spec.

    chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)).
    """
    out: list[str] = []
    for diff_id in diff_ids:
        _check_digest(diff_id)
        if not out:
            out.append(diff_id)
        else:
            text = f"{out[-1]} {diff_id}".encode()
            out.append("sha256:" + hashlib.sha256(text).hexdigest())
    return out
