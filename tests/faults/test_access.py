"""Who may talk to pyctrd and its shims, who may read its files, and what its logs never hold.

Other users are real here: `setpriv` runs the system Python as nobody
(65534), with or without the socket's group, so the kernel's own permission
checks decide (root's Python lives under /root, which nobody cannot enter).
"""

from __future__ import annotations

import base64
import grp
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pyctr.proto import cri_pb2
from tests.faults.conftest import Client, FaultImages, rpc_error
from tests.support.daemon import dump_toml
from tests.support.images import push
from tests.support.registry import Registry, TokenIssuer

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
# Connect, send the HTTP/2 preface and an empty SETTINGS frame, and read the
# server's first frame header: proof that the server itself answered.
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused"); sys.exit(0)
s.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
print("answered" if len(s.recv(9)) == 9 else "silent")
"""


def connect_as_nobody(path: str | Path, group: int | None = None) -> str:
    groups = [f"--groups={group}"] if group is not None else ["--clear-groups"]
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *groups,
         SYSTEM_PYTHON, "-I", "-c", CONNECT, str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def adm_gid() -> int:
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs the system python3 to act as another user")
    return grp.getgrnam("adm").gr_gid


def test_socket_admits_root_and_its_group_only(
    client_factory: Callable[..., Client], adm_gid: int
) -> None:
    cl = client_factory('socket_group = "adm"\n')
    # The socket takes connections (the kernel's backlog) a moment before the
    # daemon serves; it has its group by then. Under emulation that moment is
    # long enough for a bare connect to come first, so wait for an answer.
    cl.rt.Version(cri_pb2.VersionRequest(), timeout=30)
    st = os.stat(cl.d.address)
    assert stat.S_ISSOCK(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, adm_gid)
    assert connect_as_nobody(cl.d.address) == "refused"
    assert connect_as_nobody(cl.d.address, group=adm_gid) == "answered"
    # A group that is not there is a startup error, not a socket open to all.
    bad = client_factory('socket_group = "no-such-group-pyctr"\n', start=False)
    with pytest.raises(Exception, match="does not exist"):
        bad.d.start()


def _walk(top: Path, skip: set[Path]) -> Iterator[tuple[Path, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            yield path, os.lstat(path)


def test_nothing_of_the_daemon_is_open_to_others(
    client_factory: Callable[..., Client], fault_images: FaultImages, tmp_path: Path
) -> None:
    cl = client_factory()
    image = fault_images.ref("busybox")
    cl.native_pull(image)
    env = ["API_TOKEN=hunter2-secret"]
    running = cl.run(image, ["sh", "-c", "echo hello; sleep 600"], name="r", env=env)
    cl.run(image, ["sh", "-c", "echo bye"], name="e", env=env)
    cl.create(image, ["true"], name="c", env=env)

    tasks = cl.d.state / "tasks"
    # What containers and images are made of is theirs to show: their root
    # filesystems and the layers are checked by the snapshotter's own tests.
    skip = {p / "rootfs" for p in tasks.iterdir()} | {cl.d.root / "snapshots"}
    for top in (cl.d.root, cl.d.state):
        mode = stat.S_IMODE(os.stat(top).st_mode)
        assert mode & 0o066 == 0, f"{top} is {oct(mode)}"
        for path, st in _walk(top, skip):
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                continue
            assert mode & 0o002 == 0, f"{path} is writable by others ({oct(mode)})"
            if not stat.S_ISDIR(st.st_mode):
                assert mode & 0o004 == 0, f"{path} is readable by others ({oct(mode)})"
            else:
                assert mode & 0o004 == 0, f"{path} is listable by others ({oct(mode)})"
    assert stat.S_IMODE(os.stat(cl.d.root / "snapshots").st_mode) == 0o700
    # The shim's socket: even someone who could reach it may not connect.
    shim_sock = tasks / running.id[:16] / "shim.sock"
    assert stat.S_IMODE(os.stat(shim_sock).st_mode) & 0o077 == 0
    assert connect_as_nobody(shim_sock) == "refused"
    assert connect_as_nobody(cl.d.address) == "refused"


# -- secrets ---------------------------------------------------------------------

USER, PASSWORD = "bob", "pyctr-Secret-pw-4711"


@pytest.fixture(scope="module")
def auth_registries(
    tmp_path_factory: pytest.TempPathFactory, fault_images: FaultImages
) -> Iterator[tuple[Registry, Registry]]:
    base = tmp_path_factory.mktemp("auth")
    layout = tmp_path_factory.getbasetemp()
    src = next(layout.glob("fault-images*/oci"))
    with (
        Registry(base, htpasswd={USER: PASSWORD}) as basic,
        TokenIssuer(base, {USER: PASSWORD}) as issuer,
        Registry(base, token=issuer) as token,
    ):
        for reg in (basic, token):
            push(src, "busybox", f"{reg.host}/faults/busybox:1", creds=f"{USER}:{PASSWORD}")
        yield basic, token


def test_registry_credentials_never_reach_logs_or_errors(
    client_factory: Callable[..., Client], auth_registries: tuple[Registry, Registry]
) -> None:
    basic, token = auth_registries
    config = {"registry": {"hosts": {token.host: {"username": USER, "password": PASSWORD}}}}
    cl = client_factory(dump_toml(config))  # at debug level (the fixture's default)
    b64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def pull(ref: str, **auth: str) -> grpc.StatusCode:
        req = cri_pb2.PullImageRequest(
            image=cri_pb2.ImageSpec(image=ref), auth=cri_pb2.AuthConfig(**auth)
        )
        try:
            cl.img.PullImage(req, timeout=60)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            code, details = rpc_error(e)
            for secret in (PASSWORD, b64, "wrong-" + PASSWORD):
                assert secret not in details, details
            return code

    ref = f"{basic.host}/faults/busybox:1"
    assert pull(ref, username=USER, password="wrong-" + PASSWORD) == grpc.StatusCode.UNAUTHENTICATED
    assert pull(ref, username=USER, password=PASSWORD) == grpc.StatusCode.OK
    cl.img.RemoveImage(cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=ref)), timeout=30)
    assert pull(ref, auth=b64) == grpc.StatusCode.OK
    assert pull(f"{token.host}/faults/busybox:1") == grpc.StatusCode.OK  # from the config file
    cl.d.stop()

    log = cl.d.log()
    assert "PullImage" in log or "pull" in log.lower()  # the log is not simply empty
    for secret in (PASSWORD, b64, "wrong-" + PASSWORD):
        assert secret not in log
    assert "eyJ" not in log, "a bearer token (JWT) was logged"
    assert "Authorization" not in log
    # Nor anywhere else the daemon writes, besides the config it was given.
    for top in (cl.d.root, cl.d.state):
        for path, st in _walk(top, set()):
            if stat.S_ISREG(st.st_mode) and st.st_size < (8 << 20):
                data = path.read_bytes()
                assert PASSWORD.encode() not in data, path
                assert b64.encode() not in data, path
