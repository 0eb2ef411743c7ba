"""What "consistent" means for a pyctrd's dirs, checked from the outside.

`problems(d)` reads the daemon's root and state dirs, its database (read-only,
beside a live daemon: SQLite WAL allows it) and /proc, and lists every way in
which metadata, content, snapshots, mounts and processes disagree:

- every committed blob hashes to its name, and nothing else sits among them;
- every image record's blobs are stored and its top snapshot is committed,
  with its whole chain;
- snapshot rows and snapshot dirs match one to one; no `extract-*` or
  `new-*` leftover (with `quiet=True`: nothing is pulling);
- mounts under the daemon's dirs are exactly the rootfs of created and
  running containers (and nothing is mounted twice);
- a created or running container has its task dir, bundle and snapshot; a
  running one has a live shim and process; an exited one has neither a shim
  nor runc state nor a mounted rootfs;
- task dirs, runc states and container-keyed snapshots all belong to records.

It is deliberately independent of pyctr's code (paths and tables are read
as an operator would), so a bug in the daemon cannot hide itself here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.daemon import PyctrDaemon
from tests.support.leaks import mounts

FULL_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ContainerRow:
    id: str
    name: str
    kind: str
    status: str
    pid: int
    snapshot: str
    details: dict[str, Any]  # the typed record's own fields (daemon/runtime/records.py)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


def query(d: PyctrDaemon, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read the daemon's database without writing to it."""
    path = d.root / "meta.db"
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise


def containers(d: PyctrDaemon) -> dict[str, ContainerRow]:
    rows = query(d, "SELECT id, name, kind, status, pid, snapshot, details FROM containers")
    return {r["id"]: ContainerRow(*tuple(r)[:6], json.loads(r["details"])) for r in rows}


def snapshots(d: PyctrDaemon) -> dict[str, sqlite3.Row]:
    rows = query(d, "SELECT id, key, kind, parent_id FROM snap_snapshots")
    return {r["key"]: r for r in rows}


def blob_digests(d: PyctrDaemon) -> set[str]:
    blobs = d.root / "content" / "blobs" / "sha256"
    return {"sha256:" + p.name for p in blobs.iterdir()} if blobs.is_dir() else set()


def ingests(d: PyctrDaemon) -> list[str]:
    ingest = d.root / "content" / "ingest"
    return sorted(p.name for p in ingest.iterdir()) if ingest.is_dir() else []


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _content(d: PyctrDaemon) -> Iterator[str]:
    blobs = d.root / "content" / "blobs" / "sha256"
    if not blobs.is_dir():
        return
    for p in blobs.iterdir():
        if not re.fullmatch(r"[0-9a-f]{64}", p.name) or not p.is_file():
            yield f"content: stray entry blobs/sha256/{p.name}"
        elif _file_sha256(p) != p.name:
            yield f"content: blob {p.name[:16]} does not hash to its name"
    ingest = d.root / "content" / "ingest"
    for p in ingest.iterdir() if ingest.is_dir() else []:
        try:
            meta = json.loads((p / "meta").read_text())
            size = (p / "data").stat().st_size
        except (OSError, ValueError):
            continue  # half-made ingest: harmless, GC's to remove
        if size > meta.get("size", 0):
            yield f"content: ingest {p.name} holds more bytes than its blob has"


def _images(d: PyctrDaemon, snaps: dict[str, sqlite3.Row]) -> Iterator[str]:
    stored = blob_digests(d)
    by_id = {r["id"]: r for r in snaps.values()}
    for img in query(d, "SELECT id, manifest_digest, layers, chain_id FROM images"):
        needed = {img["id"], img["manifest_digest"]}
        needed |= {layer["digest"] for layer in json.loads(img["layers"])}
        for digest in sorted(needed - stored):
            yield f"images: {img['id'][:19]} lacks blob {digest[:19]}"
        if not img["chain_id"]:
            continue
        row = snaps.get(img["chain_id"])
        if row is None:
            yield f"images: {img['id'][:19]} lacks its snapshot {img['chain_id'][:19]}"
            continue
        depth = 0
        while row is not None:
            if row["kind"] != "committed":
                yield f"images: snapshot {row['key'][:19]} of {img['id'][:19]} is {row['kind']}"
            row = by_id.get(row["parent_id"]) if row["parent_id"] is not None else None
            depth += 1
        if depth != len(json.loads(img["layers"])):
            yield f"images: {img['id'][:19]} has a chain of {depth} snapshots, not one per layer"


def _snapshots(d: PyctrDaemon, snaps: dict[str, sqlite3.Row], quiet: bool) -> Iterator[str]:
    sdir = d.root / "snapshots"
    on_disk = set(os.listdir(sdir)) if sdir.is_dir() else set()
    ids = {str(r["id"]): r for r in snaps.values()}
    for sid, r in ids.items():
        if not (sdir / sid / "fs").is_dir():
            yield f"snapshots: row {r['key'][:40]!r} has no directory"
        if quiet and r["key"].startswith("extract-"):
            yield f"snapshots: interrupted extraction {r['key'][:40]!r} left behind"
    for entry in sorted(on_disk - ids.keys()):
        if quiet or not entry.startswith("new-"):
            yield f"snapshots: directory {entry} has no row"


def _shim_pid(task_dir: Path) -> int | None:
    try:
        return int((task_dir / "shim.pid").read_text())
    except (OSError, ValueError):
        return None


def _containers(d: PyctrDaemon, snaps: dict[str, sqlite3.Row]) -> Iterator[str]:
    records = containers(d)
    tasks = d.state / "tasks"
    runc_root = d.state / "runc"
    mounted = mounts((str(d.base),))
    expected_mounts: set[str] = set()
    for c in records.values():
        task = tasks / c.id[:16]
        rootfs = task / "rootfs"
        shim = _shim_pid(task)
        what = f"container {c.name} ({c.status})"
        if c.kind == "container" or c.snapshot:
            row = snaps.get(c.snapshot)
            if c.snapshot and (row is None or row["kind"] != "active"):
                yield f"{what}: its snapshot {c.snapshot[:12]} is missing or not active"
        if c.status in ("created", "running"):
            expected_mounts.add(str(rootfs))
            if not (task / "config.json").is_file():
                yield f"{what}: no bundle config.json"
            if str(rootfs) not in mounted:
                yield f"{what}: rootfs not mounted"
        if c.status == "running":
            if shim is None or not alive(shim):
                yield f"{what}: no live shim"
            if not alive(c.pid):
                yield f"{what}: process {c.pid} is gone"
            if not (runc_root / c.id).is_dir():
                yield f"{what}: runc has no state for it"
        if c.status == "exited":
            if shim is not None and alive(shim):
                yield f"{what}: its shim {shim} still runs"
            if (runc_root / c.id).exists():
                yield f"{what}: runc state left behind"
            if str(rootfs) in mounted:
                yield f"{what}: rootfs still mounted"
    prefixes = {cid[:16] for cid in records}
    for entry in sorted(os.listdir(tasks)) if tasks.is_dir() else []:
        if entry not in prefixes:
            yield f"tasks: dir {entry} belongs to no container"
            shim = _shim_pid(tasks / entry)
            if shim is not None and alive(shim):
                yield f"tasks: shim {shim} of {entry} runs for no container"
    for entry in sorted(os.listdir(runc_root)) if runc_root.is_dir() else []:
        if entry not in records:
            yield f"runc: state {entry[:12]} belongs to no container"
    owned = {c.snapshot for c in records.values()}
    for key, row in snaps.items():
        if row["kind"] == "active" and FULL_ID.match(key) and key not in owned:
            yield f"snapshots: container snapshot {key[:12]} belongs to no container"
    pods = d.state / "pods"
    sandboxes = {c.id: c for c in records.values() if c.kind == "sandbox"}
    for entry in sorted(os.listdir(pods)) if pods.is_dir() else []:
        if entry not in sandboxes:
            yield f"pods: dir {entry[:12]} belongs to no pod"
    for point in sorted(mounted):
        under_tasks = point.startswith(str(tasks) + "/")
        rel = point[len(str(d.state)) + 1 :].split("/")
        if under_tasks and point.endswith("/rootfs") and point not in expected_mounts:
            yield f"mounts: {point} is mounted for no live container"
        elif rel[0] in ("pods", "netns") and len(rel) >= 2:
            pod = sandboxes.get(rel[1])
            if pod is None:
                yield f"mounts: {point} is mounted for no pod"
            elif rel[0] == "pods" and pod.details.get("state") == "notready":
                yield f"mounts: {point} is still mounted for the stopped pod {pod.name}"
        elif point.startswith((str(d.root) + "/", str(d.state) + "/")) and not under_tasks:
            yield f"mounts: unexpected mount {point}"


def problems(d: PyctrDaemon, quiet: bool = True) -> list[str]:
    """Every disagreement between the daemon's metadata and its disk and processes.

    `quiet`: no operation is in flight (at rest after a restart); in-flight
    extractions and half-made snapshot dirs are then errors too.
    """
    snaps = snapshots(d)
    out = list(_content(d))
    out += _images(d, snaps)
    out += _snapshots(d, snaps, quiet)
    out += _containers(d, snaps)
    # A mountpoint listed twice: something mounted over a mount (a retry that
    # did not check what an earlier attempt had done).
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = [ln.split()[4] for ln in lines if ln.split()[4].startswith(str(d.base) + "/")]
    out += [f"mounts: {p} is mounted {points.count(p)} times" for p in sorted(set(points))
            if points.count(p) > 1]  # fmt: skip
    return out
