"""Reading files inside a container's root filesystem without leaving it.

An image is untrusted: its /etc/passwd may be a symlink to /etc/shadow on the
host, or a path may climb out through `..`. `open_in_root` resolves every
component itself, relative to a dir fd of the root, never following a link
out of it (absolute links restart at the root, `..` stops at the root), the
way a chroot would see the tree.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINKS = 40
MAX_FILE = 4 * 1024 * 1024  # /etc/passwd or /etc/group larger than this is refused


def open_in_root(root: Path, path: str, flags: int = os.O_RDONLY) -> int:
    """An fd for `path` as seen from inside `root`; raises OSError like open()."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    stack: list[int] = [root_fd]  # dir fds from the root down to the current dir
    parts = [p for p in path.split("/") if p not in ("", ".")]
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not parts
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                raise
            st = os.fstat(fd)
            if (st.st_mode & 0o170000) == 0o120000:  # a symlink: splice its target in
                target = os.readlink("", dir_fd=fd)
                os.close(fd)
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many symlinks", path)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            if last:
                # Reopen the final component for real, relative to its parent
                # (O_NOFOLLOW: it was just checked not to be a link).
                os.close(fd)
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            if (st.st_mode & 0o170000) != 0o040000:
                os.close(fd)
                raise OSError(errno.ENOTDIR, "not a directory", path)
            stack.append(fd)
        # The path named the root itself.
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def read_in_root(root: Path, path: str, limit: int = MAX_FILE) -> str | None:
    """Text of a regular file inside root, or None when it does not exist."""
    try:
        # O_NONBLOCK: an image may plant a FIFO here to hang the daemon.
        fd = open_in_root(root, path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            raise ValueError(f"{path} in the image is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} in the image is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


@dataclass
class User:
    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    name: str = ""
    home: str = "/"


class UnknownUser(Exception):
    pass


def _entries(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _uint(value: str) -> int | None:
    return int(value) if value.isdigit() and len(value) <= 10 and int(value) < 2**32 else None


def resolve_user(root: Path, spec: str, extra_groups: list[int] | None = None) -> User:
    """Resolve an image/CRI user spec (`name`, `uid`, `name:group`, `uid:gid`) in root.

    Numeric ids need no entry in /etc/passwd; names must exist. Supplementary
    groups come from /etc/group memberships of the user's name, as a login
    would give them, plus `extra_groups`.
    """
    spec = spec.strip() or "0"
    user_part, _, group_part = spec.partition(":")
    passwd = _entries(read_in_root(root, "/etc/passwd"))
    groups = _entries(read_in_root(root, "/etc/group"))
    uid_num = _uint(user_part)
    entry = next(
        (
            e
            for e in passwd
            if len(e) >= 4 and (e[0] == user_part if uid_num is None else _uint(e[2]) == uid_num)
        ),
        None,
    )
    if uid_num is None:
        if entry is None or _uint(entry[2]) is None:
            raise UnknownUser(f"user {user_part!r} not found in the image's /etc/passwd")
        uid_num = _uint(entry[2])
    assert uid_num is not None
    name = entry[0] if entry else ""
    gid = _uint(entry[3]) if entry and _uint(entry[3]) is not None else 0
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    if group_part:
        gid_num = _uint(group_part)
        if gid_num is None:
            g = next((g for g in groups if len(g) >= 3 and g[0] == group_part), None)
            if g is None or _uint(g[2]) is None:
                raise UnknownUser(f"group {group_part!r} not found in the image's /etc/group")
            gid_num = _uint(g[2])
        assert gid_num is not None
        gid = gid_num
    assert gid is not None
    additional: list[int] = []
    if name:
        for g in groups:
            if len(g) >= 4 and name in g[3].split(",") and _uint(g[2]) is not None:
                additional.append(_uint(g[2]))  # type: ignore[arg-type]
    additional += extra_groups or []
    unique = list(dict.fromkeys(additional))  # keeps order, drops repeats
    return User(uid=uid_num, gid=gid, additional_gids=unique, name=name, home=home)
