"""Image volumes: an image's filesystem mounted read-only into containers.

    root = volumes.acquire(image)          # the image's tree, mounted once per image
    source = resolve_in_image(root, "a/b") # a path inside it, links resolved in the image
    volumes.release(in_use)                # unmount what no container record names

Each image is seen through one read-only view snapshot of its chain (which
also keeps the chain from GC), mounted at <state>/image-volumes/<id hex>;
every container mount of that image binds the same tree. The mounts are the
host's, so they outlive a daemon restart; after a reboot `acquire` mounts
the view again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from pathlib import Path

from pyctr.daemon import host
from pyctr.daemon.errors import FailedPrecondition, InvalidArgument, NotFound
from pyctr.daemon.images.store import Image
from pyctr.daemon.snapshots import Snapshots
from pyctr.snapshotter.mount import unmount_all

log = logging.getLogger("pyctr.images")

KEY_PREFIX = "image-volume-"
_MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup


class ImageVolumes:
    def __init__(self, snapshotter: Snapshots, root: Path) -> None:
        self.snapshotter = snapshotter
        self.root = root
        self._lock = threading.Lock()  # acquire/release run in worker threads

    @staticmethod
    def _name(image_id: str) -> str:
        return image_id.partition(":")[2] or image_id

    def mounted(self) -> set[str]:
        """Image IDs (sha256:...) with a mounted view."""
        if not self.root.is_dir():
            return set()
        return {f"sha256:{p.name}" for p in self.root.iterdir() if os.path.ismount(p)}

    def acquire(self, image: Image) -> Path:
        """The image's tree, mounted read-only (made now if it is not yet)."""
        name = self._name(image.id)
        key, target = KEY_PREFIX + name, self.root / name
        with self._lock:
            if os.path.ismount(target):
                return target
            try:
                mounts = self.snapshotter.mounts(key)
            except NotFound:
                mounts = self.snapshotter.view(key, image.chain_id)
            host.searchable_dir(self.root)
            target.mkdir(mode=0o755, exist_ok=True)
            try:
                for m in mounts:
                    m.mount(target)
            except OSError as e:
                with contextlib.suppress(OSError):
                    target.rmdir()
                raise FailedPrecondition(f"cannot mount image {image.id[:19]}: {e}") from None
            log.info("image volume of %s mounted at %s", image.id[:19], target)
            return target

    def release(self, in_use: set[str]) -> None:
        """Unmount and drop the view of every image no container needs."""
        with self._lock:
            keys = {i.key for i in self.snapshotter.walk() if i.key.startswith(KEY_PREFIX)}
            names = {k.removeprefix(KEY_PREFIX) for k in keys}
            if self.root.is_dir():
                names |= {p.name for p in self.root.iterdir()}
            for name in names - {self._name(i) for i in in_use}:
                target = self.root / name
                try:
                    unmount_all(target)
                    with contextlib.suppress(FileNotFoundError):
                        target.rmdir()
                    if KEY_PREFIX + name in keys:
                        self.snapshotter.remove(KEY_PREFIX + name)
                except (OSError, NotFound) as e:  # retried at the next release
                    log.warning("releasing image volume %s: %s", name[:12], e)
                    continue
                log.info("image volume of sha256:%s released", name[:12])


def resolve_in_image(root: Path, sub_path: str) -> Path:
    """`sub_path` inside the image mounted at `root`, every symlink resolved
    as it would be inside the image (an absolute link starts at the image's
    root, `..` stops there): the result never leaves `root`."""
    if sub_path.startswith("/") or "\0" in sub_path:
        raise InvalidArgument(f"image_sub_path {sub_path[:200]!r} must be a relative path")
    if ".." in sub_path.split("/"):
        raise InvalidArgument(f"image_sub_path {sub_path[:200]!r} must not contain '..'")
    todo = [p for p in sub_path.split("/") if p not in ("", ".")]
    todo.reverse()
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        path = root.joinpath(*done, part)
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidArgument(
                f"image_sub_path {sub_path[:200]!r}: no {part!r} in the image"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise InvalidArgument(f"image_sub_path {sub_path[:200]!r}: too many links")
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            todo.extend(reversed(target.split("/")))
            continue
        done.append(part)
    return root.joinpath(*done)
