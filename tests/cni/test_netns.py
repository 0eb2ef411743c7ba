"""Pod network namespaces: made, entered, removed, on any kind of parent mount."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyctr.daemon.errors import AlreadyExists
from pyctr.daemon.pods import netns
from tests.support.leaks import mounts

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def ns_id(path: str | Path) -> str:
    return netns.run_in(path, lambda: os.readlink("/proc/thread-self/ns/net"))


def links(path: Path) -> dict[str, list[str]]:
    out = subprocess.run(
        netns.nsenter(path, ["ip", "-j", "link"]), capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"]: link["flags"] for link in json.loads(out)}


def test_create_gives_a_fresh_namespace_with_lo_up(tmp_path: Path) -> None:
    path = tmp_path / "netns" / "pod1"
    own = os.readlink("/proc/thread-self/ns/net")
    netns.create(path)
    try:
        assert netns.is_netns(path)
        assert ns_id(path) != os.readlink("/proc/self/ns/net")
        assert str(path) in mounts((str(tmp_path),))
        found = links(path)
        assert list(found) == ["lo"]  # nothing of the host's leaks in
        assert "UP" in found["lo"]
        # Making it did not move the calling thread.
        assert os.readlink("/proc/thread-self/ns/net") == own
    finally:
        netns.remove(path)
    assert not path.exists()
    assert not netns.is_netns(path)
    assert str(path) not in mounts((str(tmp_path),))


def test_two_namespaces_differ_and_remove_is_idempotent(tmp_path: Path) -> None:
    a = netns.create(tmp_path / "a")
    b = netns.create(tmp_path / "b")
    try:
        assert ns_id(a) != ns_id(b)
    finally:
        netns.remove(a)
        netns.remove(b)
    netns.remove(a)  # gone already: fine
    netns.remove(tmp_path / "never-made")


def test_create_refuses_a_live_namespace_and_reuses_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "pod"
    netns.create(path)
    try:
        first = ns_id(path)
        with pytest.raises(AlreadyExists):
            netns.create(path)
        assert ns_id(path) == first  # untouched
    finally:
        netns.remove(path)
    path.write_text("")  # what a crash between create's two steps leaves
    assert not netns.is_netns(path)
    netns.create(path)
    try:
        assert netns.is_netns(path)
    finally:
        netns.remove(path)


def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        netns.create(blocker / "pod")  # parent is a file
    assert mounts((str(tmp_path),)) == set()


def test_run_in_returns_and_raises_and_sockets_stay_inside(tmp_path: Path) -> None:
    path = netns.create(tmp_path / "pod")
    try:
        assert netns.run_in(path, lambda: 42) == 42
        with pytest.raises(ZeroDivisionError):
            netns.run_in(path, lambda: 1 // 0)
        server = netns.run_in(path, lambda: socket.create_server(("127.0.0.1", 0)))
        with server:
            port = server.getsockname()[1]
            # The host's loopback is another one: nothing listens there.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            client = netns.run_in(path, lambda: socket.create_connection(("127.0.0.1", port)))
            with client:
                conn, _ = server.accept()
                conn.close()
        with pytest.raises(netns.NetnsError):
            netns.run_in(tmp_path / "nope", lambda: None)
    finally:
        netns.remove(path)


def test_entered_switches_only_this_thread_and_restores(tmp_path: Path) -> None:
    path = netns.create(tmp_path / "pod")
    try:
        before = os.readlink("/proc/thread-self/ns/net")
        with netns.entered(path):
            assert os.readlink("/proc/thread-self/ns/net") == ns_id(path)
            out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout
            assert [link["ifname"] for link in json.loads(out)] == ["lo"]
        assert os.readlink("/proc/thread-self/ns/net") == before
    finally:
        netns.remove(path)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@contextlib.contextmanager
def parent_dir(kind: str, base: Path) -> Iterator[tuple[Path, Path | None]]:
    """A dir for netns files on a parent of the given propagation kind;
    yields (dir, peer) where peer is another view of it (shared/slave) or None."""
    made: list[Path] = []
    d = base / "state"
    d.mkdir()
    peer: Path | None = None
    try:
        if kind == "private":
            _mount("--bind", str(d), str(d))
            made.append(d)
            _mount("--make-private", str(d))
        elif kind == "shared":
            _mount("--bind", str(d), str(d))
            made.append(d)
            _mount("--make-shared", str(d))
            peer = base / "peer"
            peer.mkdir()
            _mount("--bind", str(d), str(peer))  # a peer of the same group
            made.append(peer)
        elif kind == "slave":
            # d is a slave of `master`: what is mounted on master shows in d,
            # what is mounted on d stays there.
            master = base / "master"
            master.mkdir()
            _mount("--bind", str(master), str(master))
            made.append(master)
            _mount("--make-shared", str(master))
            _mount("--bind", str(master), str(d))
            made.append(d)
            _mount("--make-slave", str(d))
            peer = master
        yield d, peer
    finally:
        for m in reversed(made):
            subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)


@pytest.mark.parametrize("kind", ["plain", "private", "shared", "slave"])
def test_netns_on_any_parent_mount(tmp_path: Path, kind: str) -> None:
    with parent_dir(kind, tmp_path) as (d, peer):
        path = d / "netns" / "pod"
        netns.create(path)
        try:
            assert netns.is_netns(path)
            assert "UP" in links(path)["lo"]
            if kind == "shared":
                assert peer is not None
                # Propagated to the peer view, and the same namespace there.
                assert netns.is_netns(peer / "netns" / "pod")
                assert ns_id(peer / "netns" / "pod") == ns_id(path)
            if kind == "slave":
                assert peer is not None
                assert not netns.is_netns(peer / "netns" / "pod")
        finally:
            netns.remove(path)
        assert not netns.is_netns(path)
        if peer is not None:
            # The unmount propagated too: nothing pins it through the peer.
            assert not netns.is_netns(peer / "netns" / "pod")
        leftover = {m for m in mounts((str(tmp_path),)) if m.endswith("/pod")}
        assert leftover == set()
