"""The shim's plain parts, without processes: JSON codec, options, exit records."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from pyctr.shim import jsonlite
from pyctr.shim.options import UsageError, parse
from pyctr.shim.process import exit_info
from pyctr.shim.protocol import write_exit_record
from pyctr.shim.requests import valid_id


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, True, None, "x\u00e9\n\u2603"], "b": {}, "c": -3},
        [],
        "plain",
        {"nested": {"deep": [[1], [{"k": "v"}]]}},
    ],
)
def test_jsonlite_round_trips_like_json(value: object) -> None:
    text = jsonlite.dumps(value)
    assert text.isascii()
    assert json.loads(text) == value
    assert jsonlite.loads(text) == value
    assert jsonlite.loads(" \n" + json.dumps(value, indent=2) + "\n ") == value


@pytest.mark.parametrize(
    "text", ["", "{", '{"a" 1}', "[1,]", "NaN", "[Infinity]", '{"a":1} x', "'single'", "[1] [2]"]
)
def test_jsonlite_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        jsonlite.loads(text)


def test_jsonlite_refuses_unencodable() -> None:
    with pytest.raises(TypeError):
        jsonlite.dumps({"b": b"bytes"})
    with pytest.raises(ValueError):
        jsonlite.dumps(float("nan"))


def test_options_parse(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    opts = parse(
        ["--id", "c1", f"--bundle={tmp_path}", "--state", "/run/x", "--tty", "--ready-fd", "5"]
    )
    assert (opts.id, opts.bundle, opts.state, opts.tty, opts.stdin, opts.ready_fd) == (
        "c1",
        str(tmp_path),
        "/run/x",
        True,
        False,
        5,
    )
    base = ["--bundle", str(tmp_path), "--state", "/run/x"]
    for bad, message in [
        (["--id", "a/b", *base], "invalid container id"),
        (["--id", "..", *base], "invalid container id"),
        (["--id", "c", "--bundle", "rel", "--state", "/run/x"], "absolute"),
        (["--id", "c", *base, "--log-path", "rel.log"], "absolute"),
        (["--id", "c", *base, "--bogus"], "unknown argument"),
        (["--id", "c", *base, "--ready-fd", "x"], "file descriptor"),
        (["--id", "c", "--bundle", str(tmp_path), "--state", "/" + "s" * 100], "too long"),
        (["--bundle", str(tmp_path), "--state", "/run/x"], "--id is required"),
        (["--id"], "needs a value"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse(bad)


def test_ids() -> None:
    assert valid_id("exec-1.a_b+c")
    for bad in ("", "a/b", "a b", "x" * 129, 5, None, "é"):
        assert not valid_id(bad)


def test_exit_info_from_wait_status() -> None:
    assert exit_info(5, 7 << 8, 10) == {
        "pid": 5,
        "exit_status": 7,
        "signal": 0,
        "exited_at": 10,
        "oom_killed": False,
    }
    killed = exit_info(5, signal.SIGKILL, 10)
    assert (killed["exit_status"], killed["signal"]) == (137, 9)


def test_exit_record_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "exit.json"
    write_exit_record(str(path), {"exit_status": 1})
    write_exit_record(str(path), {"exit_status": 2})
    assert json.loads(path.read_text()) == {"v": 1, "exit_status": 2}
    assert os.listdir(tmp_path) == ["exit.json"]
    assert (path.stat().st_mode & 0o777) == 0o600
