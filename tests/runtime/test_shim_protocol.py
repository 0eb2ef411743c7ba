"""pyctr.shim.protocol without root: requests, versions, and the exit record on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pyctr.daemon.runtime.shim_launch import read_exit_record
from pyctr.daemon.runtime.shim_types import ExitRecord
from pyctr.shim import protocol

RECORD = {
    "id": "c1",
    "pid": 42,
    "exit_status": 137,
    "signal": 9,
    "exited_at": 5,
    "oom_killed": True,
}


def test_request_round_trip() -> None:
    line = protocol.encode_request(7, "kill", {"signal": 15, "all": None, "exec_id": "e"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    request = protocol.decode_request(line)
    assert request == {"v": protocol.PROTOCOL_VERSION, "id": 7, "op": "kill", "signal": 15,
                       "exec_id": "e"}  # fmt: skip


def test_request_without_version_is_current_and_other_versions_refused() -> None:
    assert protocol.decode_request(b'{"id": 1, "op": "hello"}')["op"] == "hello"
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode_request(b'{"v": 2, "id": 1, "op": "hello"}')
    assert err.value.code == "unsupported_version"
    with pytest.raises(protocol.ProtocolError):
        protocol.check_version(None)  # a hello reply without a version


@pytest.mark.parametrize("line", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_malformed_requests_and_replies(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode_request(line)
    assert err.value.code == "invalid_argument"
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_reply(line)


def test_every_op_the_shim_serves_is_known() -> None:
    from pyctr.shim.service import Shim

    served = {name[3:] for name in dir(Shim) if name.startswith("op_")}
    assert served == protocol.OPS


def test_exit_record_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / protocol.EXIT_RECORD)
    assert protocol.read_exit_record(path) is None
    protocol.write_exit_record(path, RECORD)
    assert protocol.read_exit_record(path) == {"v": protocol.PROTOCOL_VERSION, **RECORD}
    assert os.listdir(tmp_path) == [protocol.EXIT_RECORD]  # the temp file was renamed
    assert os.stat(path).st_mode & 0o777 == 0o600
    # The daemon's typed view of the same file.
    assert read_exit_record(tmp_path) == ExitRecord(42, 137, 9, 5, oom_killed=True)


def test_exit_record_replaced_whole(tmp_path: Path) -> None:
    path = str(tmp_path / protocol.EXIT_RECORD)
    protocol.write_exit_record(path, RECORD)
    protocol.write_exit_record(path, {**RECORD, "exit_status": 0})
    record = protocol.read_exit_record(path)
    assert record is not None and record["exit_status"] == 0


def test_record_from_before_the_version_field_is_read(tmp_path: Path) -> None:
    path = tmp_path / protocol.EXIT_RECORD
    path.write_text(json.dumps(RECORD) + "\n")  # what shims before "v" wrote
    assert protocol.read_exit_record(str(path)) == RECORD


@pytest.mark.parametrize(
    "data",
    [
        json.dumps(RECORD)[:20].encode(),  # torn: a crash mid-write
        (json.dumps(RECORD) + "\n")[:-1].encode(),  # all but the newline
        b"",
        b"{oops}\n",
        b"[1]\n",
        json.dumps({"pid": 1}).encode() + b"\n",  # no exit status
        json.dumps({**RECORD, "exit_status": "0"}).encode() + b"\n",
        json.dumps({**RECORD, "signal": "9"}).encode() + b"\n",
    ],
)
def test_unusable_exit_record_is_reported(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / protocol.EXIT_RECORD
    path.write_bytes(data)
    with pytest.raises(protocol.ExitRecordError):
        protocol.read_exit_record(str(path))
    assert read_exit_record(tmp_path) is None  # the daemon treats it as lost


def test_exit_record_of_unknown_version_refused(tmp_path: Path) -> None:
    path = tmp_path / protocol.EXIT_RECORD
    path.write_text(json.dumps({**RECORD, "v": 99}) + "\n")
    with pytest.raises(protocol.ExitRecordError) as err:
        protocol.read_exit_record(str(path))
    assert err.value.code == "unsupported_version"


def test_exit_record_writer_syncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    protocol.write_exit_record(str(tmp_path / protocol.EXIT_RECORD), RECORD)
    assert synced == [str(tmp_path / (protocol.EXIT_RECORD + ".tmp")), str(tmp_path)]


def test_protocol_imports_nothing_beyond_the_shim_and_os() -> None:
    """The daemon and every shim load this module: it must stay lean."""
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules); import pyctr.shim.protocol; "
        "print(sorted(m for m in set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    new = set(eval(out.stdout))  # noqa: S307  (our own subprocess's repr of a list of names)
    assert new <= {"pyctr", "pyctr.shim", "pyctr.shim.protocol", "pyctr.shim.jsonlite", "_json"}, (
        new
    )
