"""User resolution inside an untrusted rootfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyctr.daemon.spec.rootfs import UnknownUser, read_in_root, resolve_user

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "www:x:33:33:www:/var/www:/bin/sh\n"
    "app:x:1000:1000::/home/app:/bin/sh\n"
)
GROUP = "root:x:0:\nwww:x:33:\napp:x:1000:\naudio:x:29:app,www\nvideo:x:44:app\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(PASSWD)
    (r / "etc" / "group").write_text(GROUP)
    return r


@pytest.mark.parametrize(
    ("spec", "uid", "gid", "groups"),
    [
        ("", 0, 0, []),
        ("app", 1000, 1000, [29, 44]),
        ("1000", 1000, 1000, [29, 44]),
        ("www:video", 33, 44, [29]),
        ("app:33", 1000, 33, [29, 44]),
        ("4242", 4242, 0, []),  # numeric ids need no passwd entry
        ("4242:4243", 4242, 4243, []),
    ],
)
def test_resolve(root: Path, spec: str, uid: int, gid: int, groups: list[int]) -> None:
    u = resolve_user(root, spec)
    assert (u.uid, u.gid, u.additional_gids) == (uid, gid, groups)


def test_extra_groups_appended_once(root: Path) -> None:
    assert resolve_user(root, "app", [44, 5000]).additional_gids == [29, 44, 5000]


@pytest.mark.parametrize("spec", ["nobody", "app:nogroup", "-1", "99999999999"])
def test_unknown_names_are_errors(root: Path, spec: str) -> None:
    with pytest.raises(UnknownUser):
        resolve_user(root, spec)


def test_symlinked_passwd_cannot_escape(tmp_path: Path, root: Path) -> None:
    secret = tmp_path / "host-passwd"
    secret.write_text("evil:x:0:0::/:/bin/sh\n")
    (root / "etc" / "passwd").unlink()
    # Absolute and relative escapes both resolve inside the root, where nothing is.
    os.symlink(str(secret), root / "etc" / "passwd")
    assert read_in_root(root, "/etc/passwd") is None
    (root / "etc" / "passwd").unlink()
    os.symlink("../../../../../../" + str(secret), root / "etc" / "passwd")
    assert read_in_root(root, "/etc/passwd") is None
    with pytest.raises(UnknownUser):
        resolve_user(root, "evil")


def test_symlink_inside_root_is_followed(root: Path) -> None:
    (root / "data").mkdir()
    (root / "etc" / "passwd").rename(root / "data" / "passwd")
    os.symlink("/data/passwd", root / "etc" / "passwd")
    assert resolve_user(root, "app").uid == 1000


def test_symlinked_etc_dir_cannot_escape(tmp_path: Path, root: Path) -> None:
    host_etc = tmp_path / "hostetc"
    host_etc.mkdir()
    (host_etc / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    for f in (root / "etc").iterdir():
        f.unlink()
    (root / "etc").rmdir()
    os.symlink(str(host_etc), root / "etc")
    assert read_in_root(root, "/etc/passwd") is None


def test_fifo_does_not_hang(root: Path) -> None:
    (root / "etc" / "passwd").unlink()
    os.mkfifo(root / "etc" / "passwd")
    with pytest.raises(ValueError, match="not a regular file"):
        read_in_root(root, "/etc/passwd")


def test_symlink_loop(root: Path) -> None:
    (root / "etc" / "passwd").unlink()
    os.symlink("/etc/passwd", root / "etc" / "passwd")
    assert read_in_root(root, "/etc/passwd") is None
