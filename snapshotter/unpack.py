"""Path-safe extraction of one layer tar into one snapshot directory.

Every filesystem call goes through a directory fd reached by walking the
entry's parent path one component at a time with O_NOFOLLOW|O_DIRECTORY,
and acts on a single final name relative to it, never following a symlink.
So no entry can reach outside the root: `..` and absolute names are refused
up front, a symlink anywhere in a parent path (whether this layer planted it
or, for the native backend, a parent layer did) stops the walk, and a
hardlink may only point at a regular file this same layer created.

Whiteouts (OCI image spec, "Representing Changes"):
- "overlay" mode writes into an empty overlay upper dir: `.wh.NAME` becomes
  a 0/0 char device NAME, `.wh..wh..opq` the xattr trusted.overlay.opaque=y;
- "delete" mode writes into a full copy of the parent tree and deletes.
Per the spec a whiteout hides only what lower layers had, never what this
same layer wrote.

Metadata order matters: chown clears setuid/setgid and security.capability,
so it goes first, then xattrs, then chmod; directory mtimes are set last,
after everything inside them has been written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyctr.snapshotter import tarstream
from pyctr.snapshotter.errors import InvalidArgument, ResourceExhausted
from pyctr.snapshotter.tarstream import Header, TarFormatError, TarReader

log = logging.getLogger("pyctr.snapshotter")

Comps = tuple[bytes, ...]

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
MAX_PATH = 4096
MAX_NAME = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors that say "this entry cannot be applied", not "the machine is sick".
_BAD_INPUT = {
    errno.ENAMETOOLONG,
    errno.EINVAL,
    errno.ELOOP,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOENT,
    errno.EEXIST,
    errno.ENOTEMPTY,
    errno.EOVERFLOW,
    errno.ERANGE,
    errno.E2BIG,
    errno.EMLINK,
}


class BadEntry(Exception):
    """An entry refused for the reason given; becomes InvalidArgument with context."""


@dataclass
class Extracted:
    entries: int = 0
    bytes: int = 0
    # Overlay mode: dirs this layer created only to hold entries, with no
    # header of their own; they must take the lower layers' metadata.
    implicit_dirs: list[Comps] = field(default_factory=list)


def split_name(name: str | bytes, what: str = "name") -> Comps:
    """A tar name as path components; refuses absolute paths and `..`."""
    raw = os.fsencode(name)
    if b"\0" in raw:
        raise BadEntry(f"{what} contains NUL")
    if len(raw) > MAX_PATH:
        raise BadEntry(f"{what} is {len(raw)} bytes long (limit {MAX_PATH})")
    if raw.startswith(b"/"):
        raise BadEntry(f"{what} is an absolute path")
    comps = tuple(c for c in raw.split(b"/") if c not in (b"", b"."))
    for c in comps:
        if c == b"..":
            raise BadEntry(f"{what} has a '..' component")
        if len(c) > MAX_NAME:
            raise BadEntry(f"{what} has a component of {len(c)} bytes (limit {MAX_NAME})")
    return comps


def _show(comps: Comps) -> str:
    return os.fsdecode(b"/".join(comps)) or "/"


class Extractor:
    def __init__(self, root: Path, whiteouts: str, *, allow_devices: bool) -> None:
        if whiteouts not in ("overlay", "delete"):
            raise ValueError(whiteouts)
        self.overlay = whiteouts == "overlay"
        self.allow_devices = allow_devices
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.result = Extracted()
        self.created: set[Comps] = set()  # paths this layer wrote (any type)
        self.files: set[Comps] = set()  # of those, regular files: hardlink targets
        # The root counts as implicit until the layer gives it a header.
        self.implicit: set[Comps] = {()}
        self.whited: set[Comps] = set()  # overlay: paths whited out by this layer
        self.dir_times: dict[Comps, tuple[int, int]] = {}
        # Delete mode: times of existing dirs this layer changes without a
        # header for them, put back at the end (as if only the entry changed).
        self.touched: dict[Comps, tuple[int, int]] = {}
        self._cache: tuple[Comps, int] | None = None  # last parent dir walked

    def close(self) -> None:
        self._drop_cache()
        os.close(self.root_fd)

    # -- the loop ------------------------------------------------------------------

    def run(self, tar: TarReader) -> Extracted:
        while True:
            member = tar.next()
            if member is None:
                break
            try:
                self._entry(tar, member)
            except BadEntry as e:
                raise InvalidArgument(f"entry {member.show()!r}: {e}") from None
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(f"entry {member.show()!r}: {e.strerror}") from None
                if e.errno in _BAD_INPUT:
                    raise InvalidArgument(f"entry {member.show()!r}: {e.strerror}") from None
                raise
            self.result.entries += 1
        self._finish()
        self.result.implicit_dirs = sorted(self.implicit, key=len)
        return self.result

    def _entry(self, tar: TarReader, m: Header) -> None:
        comps = split_name(m.name)
        if comps and comps[0].startswith(b".wh..wh."):
            return  # aufs bookkeeping (.wh..wh.plnk and friends): not content
        for c in comps[:-1]:
            if c.startswith(WHITEOUT):
                raise BadEntry("a whiteout name used as a directory")
        if comps and comps[-1].startswith(WHITEOUT):
            self._whiteout(comps)
            return
        kind = m.kind
        if not comps:
            if kind != tarstream.DIR:
                raise BadEntry("only a directory may stand for the root")
            self._dir_meta(self.root_fd, (), m)
            self.implicit.discard(())
            return
        if kind == tarstream.REG:
            self._file(tar, comps, m)
        elif kind == tarstream.DIR:
            self._mkdir(comps, m)
        elif kind == tarstream.SYM:
            self._symlink(comps, m)
        elif kind == tarstream.LNK:
            self._hardlink(comps, m)
        elif kind in (tarstream.CHR, tarstream.BLK, tarstream.FIFO):
            self._node(comps, m)
        else:
            raise BadEntry(f"unsupported tar entry type {kind!r}")

    # -- walking -------------------------------------------------------------------

    def _drop_cache(self) -> None:
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    def _parent(self, comps: Comps) -> int:
        """An fd of the entry's parent dir, creating missing dirs on the way."""
        parent = comps[:-1]
        if not parent:
            self._touch(self.root_fd, ())
            return self.root_fd
        if self._cache is not None and self._cache[0] == parent:
            return self._cache[1]
        fd = self._walk(parent, create=True)
        assert fd is not None
        self._drop_cache()
        self._cache = (parent, fd)
        self._touch(fd, parent)
        return fd

    def _touch(self, fd: int, comps: Comps) -> None:
        if not self.overlay and comps not in self.touched:
            st = os.fstat(fd)
            self.touched[comps] = (st.st_atime_ns, st.st_mtime_ns)

    def _walk(self, comps: Comps, *, create: bool) -> int | None:
        """Open dir `comps` without following symlinks (caller closes; None if missing)."""
        cur = self.root_fd
        try:
            for i, c in enumerate(comps):
                try:
                    nxt = os.open(c, _DIR_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        return None
                    self._touch(cur, comps[:i])
                    os.mkdir(c, 0o755, dir_fd=cur)
                    os.chmod(c, 0o755, dir_fd=cur, follow_symlinks=False)  # whatever the umask
                    path = comps[: i + 1]
                    self.created.add(path)
                    if self.overlay and path in self.whited:
                        self._set_opaque_at(cur, c)  # recreated after a whiteout
                    else:
                        self.implicit.add(path)
                    nxt = os.open(c, _DIR_FLAGS, dir_fd=cur)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(c, dir_fd=cur, follow_symlinks=False)
                    kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                    raise BadEntry(f"parent {_show(comps[: i + 1])} is {kind}") from None
                if cur != self.root_fd:
                    os.close(cur)
                cur = nxt
        except BaseException:
            if cur != self.root_fd:
                os.close(cur)
            raise
        return os.dup(cur) if cur == self.root_fd else cur

    def _clear(self, fd: int, comps: Comps) -> None:
        """Make room for a new non-dir at comps (tar semantics: later wins)."""
        if self.overlay and comps not in self.created and comps not in self.whited:
            return  # an overlay upper starts empty: only this layer's entries can be there
        name = comps[-1]
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._rmtree(fd, comps)
        else:
            os.unlink(name, dir_fd=fd)

    def _rmtree(self, fd: int, comps: Comps) -> None:
        # The cached parent may be inside what goes; the cache's own dir never
        # is (it is the parent of the entry being written), but be plain.
        if self._cache is not None and self._cache[0][: len(comps)] == comps:
            self._drop_cache()
        shutil.rmtree(comps[-1], dir_fd=fd)
        n = len(comps)
        for s in (self.created, self.files, self.implicit):
            s.difference_update({p for p in s if p[:n] == comps})

    # -- entry types -------------------------------------------------------------

    def _mkdir(self, comps: Comps, m: Header) -> None:
        fd = self._parent(comps)
        name = comps[-1]
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=fd)
            if self.overlay and comps in self.whited:
                self._set_opaque_at(fd, name)
        self.implicit.discard(comps)
        self.created.add(comps)
        dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            self._dir_meta(dfd, comps, m)
        finally:
            os.close(dfd)

    def _dir_meta(self, dfd: int, comps: Comps, m: Header) -> None:
        os.chown(dfd, m.uid, m.gid)
        self._xattrs(dfd, m)
        os.chmod(dfd, m.mode & 0o7777)
        self.dir_times[comps] = self._times(m)

    def _file(self, tar: TarReader, comps: Comps, m: Header) -> None:
        fd = self._parent(comps)
        self._clear(fd, comps)
        out = os.open(
            comps[-1],
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=fd,
        )
        try:
            self.result.bytes += tar.copy_to(out)
            os.chown(out, m.uid, m.gid)
            self._xattrs(out, m)
            os.chmod(out, m.mode & 0o7777)
            os.utime(out, ns=self._times(m))
        finally:
            os.close(out)
        self.created.add(comps)
        self.files.add(comps)

    def _symlink(self, comps: Comps, m: Header) -> None:
        target = m.linkname
        if not target or b"\0" in target or len(target) >= MAX_PATH:
            raise BadEntry("symlink target is empty, too long or contains NUL")
        fd = self._parent(comps)
        self._clear(fd, comps)
        os.symlink(target, comps[-1], dir_fd=fd)
        self._node_meta(fd, comps, m, chmod=False)
        self.created.add(comps)

    def _hardlink(self, comps: Comps, m: Header) -> None:
        target = split_name(m.linkname, "hardlink target")
        if target == comps:
            raise BadEntry("hardlink to itself")
        if target not in self.files:
            raise BadEntry(f"hardlink target {_show(target)} is not a file of this layer")
        fd = self._parent(comps)
        self._clear(fd, comps)
        tfd = self._walk(target[:-1], create=False)
        if tfd is None:
            raise BadEntry(f"hardlink target {_show(target)} no longer exists")
        try:
            st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise BadEntry(f"hardlink target {_show(target)} is not a regular file")
            os.link(target[-1], comps[-1], src_dir_fd=tfd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(tfd)
        self.created.add(comps)
        self.files.add(comps)

    def _node(self, comps: Comps, m: Header) -> None:
        if m.kind == tarstream.FIFO:
            kind = stat.S_IFIFO
            dev = 0
        else:
            kind = stat.S_IFCHR if m.kind == tarstream.CHR else stat.S_IFBLK
            if kind == stat.S_IFCHR and m.devmajor == 0 and m.devminor == 0:
                raise BadEntry("char device 0/0 is reserved for overlay whiteouts")
            if not self.allow_devices:
                raise BadEntry("device nodes are not allowed (snapshotter.allow_devices)")
            dev = os.makedev(m.devmajor, m.devminor)
        fd = self._parent(comps)
        self._clear(fd, comps)
        os.mknod(comps[-1], kind | 0o600, dev, dir_fd=fd)
        self._node_meta(fd, comps, m, chmod=True)
        self.created.add(comps)

    def _node_meta(self, fd: int, comps: Comps, m: Header, *, chmod: bool) -> None:
        name = comps[-1]
        os.chown(name, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
        if _xattrs_of(m):
            # No *at() form of setxattr: reach the inode through an O_PATH fd
            # of the very entry (the magic link does not follow it further).
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                self._xattrs(f"/proc/self/fd/{pfd}", m)
            finally:
                os.close(pfd)
        if chmod:
            os.chmod(name, m.mode & 0o7777, dir_fd=fd, follow_symlinks=False)
        os.utime(name, ns=self._times(m), dir_fd=fd, follow_symlinks=False)

    def _times(self, m: Header) -> tuple[int, int]:
        return (m.mtime_ns if m.atime_ns is None else m.atime_ns, m.mtime_ns)

    def _xattrs(self, target: int | str, m: Header) -> None:
        for key, value in _xattrs_of(m):
            try:
                os.setxattr(target, key, value)
            except OSError as e:
                if e.errno == errno.EOPNOTSUPP:
                    log.debug("xattr %s not supported here; skipped on %s", key, m.show())
                    continue
                raise

    # -- whiteouts -------------------------------------------------------------------

    def _whiteout(self, comps: Comps) -> None:
        parent = comps[:-1]
        if comps[-1] == OPAQUE:
            self._opaque(parent)
            return
        name = comps[-1][len(WHITEOUT) :]
        if name in (b"", b".", b".."):
            raise BadEntry("whiteout of an invalid name")
        path = (*parent, name)
        if self.overlay:
            self._overlay_whiteout(path)
        else:
            self._delete_whiteout(path)

    def _overlay_whiteout(self, path: Comps) -> None:
        fd = self._parent(path)
        try:
            st = os.stat(path[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            os.mknod(path[-1], stat.S_IFCHR, 0, dir_fd=fd)
            self.whited.add(path)
            return
        # This layer wrote the path already: it stays; a dir of it must still
        # hide the lower layers' contents.
        if stat.S_ISDIR(st.st_mode):
            self._set_opaque_at(fd, path[-1])
            self.implicit.discard(path)

    def _delete_whiteout(self, path: Comps) -> None:
        if path in self.created:
            return  # only lower layers' files are whited out
        fd = self._walk(path[:-1], create=False)
        if fd is None:
            return
        try:
            self._touch(fd, path[:-1])
            self._clear(fd, path)
        finally:
            os.close(fd)

    def _opaque(self, dir_comps: Comps) -> None:
        if self.overlay:
            fd = self._walk(dir_comps, create=True)
            assert fd is not None
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        fd = self._walk(dir_comps, create=False)
        if fd is None:
            return
        try:
            self._empty_lower(fd, dir_comps)
        finally:
            os.close(fd)

    def _empty_lower(self, fd: int, dir_comps: Comps) -> None:
        """Delete what lower layers put under a dir, keeping this layer's entries."""
        self._touch(fd, dir_comps)
        for name in os.listdir(fd):
            path = (*dir_comps, os.fsencode(name))
            if path not in self.created:
                self._clear(fd, path)
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    self._empty_lower(sub, path)
                finally:
                    os.close(sub)

    def _set_opaque_at(self, fd: int, name: bytes) -> None:
        dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            os.setxattr(dfd, OPAQUE_XATTR, b"y")
        finally:
            os.close(dfd)

    # -- the end ----------------------------------------------------------------------

    def _finish(self) -> None:
        self._drop_cache()
        restore = {c: t for c, t in self.touched.items() if c not in self.created}
        for comps, times in [*restore.items(), *self.dir_times.items()]:
            try:
                fd = self._walk(comps, create=False) if comps else os.dup(self.root_fd)
            except BadEntry:
                continue  # a later entry replaced it (or a parent) with a non-directory
            if fd is None:
                continue  # removed by a later entry
            try:
                os.utime(fd, ns=times)
            finally:
                os.close(fd)


def _xattrs_of(m: Header) -> list[tuple[str, bytes]]:
    if not m.xattrs:
        return []
    out = []
    for name, value in m.xattrs.items():
        if name.startswith(("trusted.overlay.", "user.overlay.")):
            # The overlay's own bookkeeping: a layer must not forge it.
            log.debug("ignoring xattr %s on %s", name, m.show())
            continue
        out.append((name, value))
    return out


def extract(
    chunks: Callable[[], bytes], root: Path, whiteouts: str, *, allow_devices: bool
) -> Extracted:
    """Apply the uncompressed tar read from `chunks()` (b"" at its end) under `root`.

    Raises InvalidArgument naming the entry and the reason for anything that
    would escape `root` or cannot be applied; the caller discards `root`.
    The tar stream is read up to its end-of-archive marker only.
    """
    ex = Extractor(root, whiteouts, allow_devices=allow_devices)
    reader = TarReader(chunks)
    try:
        return ex.run(reader)
    except TarFormatError as e:
        raise InvalidArgument(f"corrupt tar archive: {e}") from None
    finally:
        ex.close()
