"""What a native container is made of, and what is refused before anything is made.

Bad requests get a clear error and leave no record, snapshot, mount or task
dir; a container whose process cannot start (runc fails, runc is missing)
is recorded as a StartError and leaves nothing running.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from pyctr.proto import containers_pb2 as pb
from tests.containers.conftest import Ctr, wait_for

pytestmark = pytest.mark.root


def _error(call: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.RpcError)
    return call.code(), call.details()  # type: ignore[attr-defined]


def _nothing_left(ctr: Ctr) -> None:
    assert ctr.list() == []
    assert not list((ctr.d.state / "tasks").iterdir())
    assert ctr.active_snapshots() == set()


def test_bad_requests_change_nothing(ctr: Ctr, tmp_path: Path) -> None:
    bad = [
        ({"image": "nosuch/image:1"}, grpc.StatusCode.NOT_FOUND, "not found"),
        ({"name": "bad name!"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid name"),
        ({"env": ["NOEQUALS"]}, grpc.StatusCode.INVALID_ARGUMENT, "KEY=VALUE"),
        ({"workdir": "relative"}, grpc.StatusCode.INVALID_ARGUMENT, "absolute"),
        ({"user": "nobody"}, grpc.StatusCode.INVALID_ARGUMENT, "'nobody'"),
        ({"user": "app:nogroup"}, grpc.StatusCode.INVALID_ARGUMENT, "'nogroup'"),
        ({"network": "bridge"}, grpc.StatusCode.INVALID_ARGUMENT, "network"),
        ({"image": ctr.images.baduser}, grpc.StatusCode.INVALID_ARGUMENT, "'nosuchuser'"),
        (
            {"mounts": [pb.ContainerMount(source=str(tmp_path / "none"), destination="/x")]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not exist",
        ),
        (
            {"mounts": [pb.ContainerMount(source=str(tmp_path), destination="/")]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "root filesystem",
        ),
        ({"args": ["a\0b"]}, grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
    ]
    ctr.pull(ctr.images.baduser)
    for fields, code, text in bad:
        kw = {"args": ["true"], **fields}
        with pytest.raises(grpc.RpcError) as err:
            ctr.create(**kw)  # type: ignore[arg-type]
        assert _error(err.value)[0] == code, (fields, err.value)
        assert text in _error(err.value)[1], (fields, err.value)
    _nothing_left(ctr)

    ctr.create(["true"], name="taken")
    with pytest.raises(grpc.RpcError) as err:
        ctr.create(["true"], name="taken")
    assert _error(err.value)[0] == grpc.StatusCode.ALREADY_EXISTS
    assert len(ctr.list()) == 1


def test_a_command_runc_cannot_start_is_a_start_error(ctr: Ctr) -> None:
    res = ctr.cli("run", "--name", "nope", ctr.image, "/no/such/binary")
    assert res.returncode == 125
    assert "/no/such/binary" in res.stderr and "no such file" in res.stderr.lower()
    info = json.loads(ctr.cli("inspect", "nope").stdout)
    assert info["status"] == "exited" and info["reason"] == "StartError"
    assert "/no/such/binary" in info["message"]
    # Nothing runs for it: no shim, no runc state, rootfs unmounted.
    task = ctr.d.state / "tasks" / info["id"][:16]
    assert not (task / "shim.sock").exists()
    assert not (ctr.d.state / "runc" / info["id"]).exists()
    assert not any(line.split()[4].startswith(str(task)) for line in _mountinfo())
    start = ctr.cli("start", "nope")
    assert start.returncode == 1 and "exited" in start.stderr
    assert ctr.cli("rm", "nope").returncode == 0
    # With --rm the failed container goes too.
    res = ctr.cli("run", "--rm", ctr.image, "/no/such/binary")
    assert res.returncode == 125
    wait_for(lambda: ctr.list() == [], what="auto-removal after a start error")
    _nothing_left(ctr)


def _mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def test_missing_runc_is_a_clear_start_error(ctr_factory) -> None:  # type: ignore[no-untyped-def]
    ctr = ctr_factory('[runtime]\nrunc = "/nonexistent/runc"\n')
    c = ctr.create(["true"], name="norunc")
    with pytest.raises(grpc.RpcError) as err:
        ctr.api.Start(pb.ContainerStartRequest(container="norunc"), timeout=30)
    code, text = _error(err.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "/nonexistent/runc" in text
    info = ctr.get(c.id)
    assert (info.status, info.reason, info.exit_code) == ("exited", "StartError", 128)
    ctr.remove(c.id, force=False)
    _nothing_left(ctr)


def test_image_config_user_env_workdir_and_overrides(ctr: Ctr, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    script = (
        "id -u; id -g; echo $HOME; pwd; cat /data/in.txt; "
        "touch /data/new 2>/dev/null && echo writable || echo read-only; "
        "touch /rw/made && echo rw-ok; ip -o link 2>/dev/null | grep -c ': ' "
    )
    rw = tmp_path / "rw"
    rw.mkdir()
    rw.chmod(0o777)  # the container runs as uid 1000
    mounts = [
        pb.ContainerMount(source=str(data), destination="/data", readonly=True),
        pb.ContainerMount(source=str(rw), destination="/rw"),
    ]
    c = ctr.run(["sh", "-c", script], user="app", workdir="/tmp", mounts=mounts)
    assert ctr.wait(c.id).exit_code == 0
    out = ctr.cli("logs", c.id).stdout.splitlines()
    assert out[:7] == ["1000", "1000", "/home/app", "/tmp", "from the host", "read-only", "rw-ok"]
    assert out[7] == "1"  # a network namespace of its own: loopback only
    assert (rw / "made").exists() and not (data / "new").exists()

    host = ctr.run(["sh", "-c", "ip -o link | grep -c ': '; hostname"], network="host")
    assert ctr.wait(host.id).exit_code == 0
    links, hostname = ctr.cli("logs", host.id).stdout.split()
    assert int(links) == len(list(Path("/sys/class/net").iterdir()))
    assert hostname == Path("/proc/sys/kernel/hostname").read_text().strip()
    spec = json.loads(ctr.api.Get(pb.ContainerGetRequest(container=host.id)).spec_json)
    assert "network" not in {n["type"] for n in spec["linux"]["namespaces"]}


def test_attach_to_a_running_container(ctr: Ctr) -> None:
    script = "echo ready; read line; echo got $line; exit 9"
    c = ctr.run(["sh", "-c", script], stdin=True, name="talk")
    wait_for(lambda: "ready" in ctr.cli("logs", "talk").stdout, what="the container to start")
    res = ctr.cli("attach", "talk", input="hello\n")
    assert res.returncode == 9, res.stderr
    assert res.stdout == "got hello\n"  # "ready" was before we attached
    assert ctr.get(c.id).exit_code == 9
