"""The CRI log file: format, long lines, rotation and a full disk."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from pyctr.shim.crilog import MAX_LINE, CriLogWriter, rfc3339nano, split_records
from tests.shim.conftest import Harness

RECORD = re.compile(
    rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.(\d{9})(Z|[+-]\d\d:\d\d)) (stdout|stderr) ([FP]) (.*)$",
    re.S,
)


def parse_log(text: bytes) -> list[tuple[str, str, bytes]]:
    """(stream, tag, content) of each record; fails on any malformed line."""
    out = []
    assert text.endswith(b"\n")
    for line in text[:-1].split(b"\n"):
        m = RECORD.match(line)
        assert m, f"not a CRI log record: {line[:120]!r}"
        datetime.fromisoformat(m.group(1)[:26].decode() + "+00:00")  # a real date
        out.append((m.group(4).decode(), m.group(5).decode(), m.group(6)))
    return out


def join_lines(records: list[tuple[str, str, bytes]], stream: str) -> list[bytes]:
    """Reassemble P...F runs into lines, as the kubelet does."""
    lines, part = [], b""
    for s, tag, content in records:
        if s != stream:
            continue
        part += content
        if tag == "F":
            lines.append(part)
            part = b""
    assert part == b"", "a partial line was never finished"
    return lines


# -- the writer on its own ------------------------------------------------------


def test_split_records_cuts_long_lines() -> None:
    pending = bytearray()
    assert split_records(pending, b"ab") == []
    assert split_records(pending, b"c\nd") == [(b"F", b"abc")]
    assert bytes(pending) == b"d"
    records = split_records(pending, b"x" * 40 + b"\n\n", max_line=16)
    assert records == [(b"P", b"d" + b"x" * 15), (b"P", b"x" * 16), (b"F", b"x" * 9), (b"F", b"")]
    # A line of exactly max_line bytes is one full record.
    assert split_records(bytearray(), b"y" * 16 + b"\n", max_line=16) == [(b"F", b"y" * 16)]


def test_timestamp_format() -> None:
    assert rfc3339nano(1_795_309_367_000_000_001) == b"2026-11-22T01:02:47.000000001Z"
    assert rfc3339nano(0) == b"1970-01-01T00:00:00.000000000Z"


def test_writer_flushes_unfinished_line_at_end(tmp_path: Path) -> None:
    log = CriLogWriter(str(tmp_path / "c.log"))
    log.write(b"stdout", b"one\ntwo")
    log.write(b"stderr", b"err\n")
    log.close()
    records = parse_log((tmp_path / "c.log").read_bytes())
    assert [(s, t, c) for s, t, c in records] == [
        ("stdout", "F", b"one"),
        ("stderr", "F", b"err"),
        ("stdout", "F", b"two"),
    ]


def test_writer_survives_missing_directory(tmp_path: Path) -> None:
    log = CriLogWriter(str(tmp_path / "gone" / "c.log"))
    log.write(b"stdout", b"lost\n")
    assert log.dropped == 1 and "No such file" in log.last_error
    (tmp_path / "gone").mkdir()
    assert log.reopen()
    log.write(b"stdout", b"kept\n")
    log.close()
    assert parse_log((tmp_path / "gone" / "c.log").read_bytes()) == [("stdout", "F", b"kept")]


# -- through a real container ---------------------------------------------------


async def test_log_format_and_long_line(harness: Harness) -> None:
    script = (
        "echo first; echo oops >&2; printf 'no newline'; sleep 0.1; echo ' done';"
        " head -c 102400 /dev/zero | tr '\\0' a; echo; echo last"
    )
    client = await harness.spawn("logfmt", ["sh", "-c", script])
    opts = harness.options[-1]
    await client.start()
    assert (await client.wait()).exit_status == 0
    records = parse_log(Path(opts.log_path or "").read_bytes())
    out = join_lines(records, "stdout")
    assert out == [b"first", b"no newline done", b"a" * 102400, b"last"]
    assert join_lines(records, "stderr") == [b"oops"]
    long = [(t, len(c)) for s, t, c in records if s == "stdout" and c.startswith(b"aaa")]
    # 100 KiB = six full 16 KiB partial records and a final 4 KiB one.
    assert long == [("P", MAX_LINE)] * 6 + [("F", 102400 - 6 * MAX_LINE)]
    await client.delete()


async def test_reopen_log_mid_stream_loses_nothing(harness: Harness) -> None:
    n = 600
    script = f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo line $i; usleep 2000; done"
    client = await harness.spawn("rotate", ["sh", "-c", script])
    opts = harness.options[-1]
    log = Path(opts.log_path or "")
    await client.start()
    rotated = []
    for k in range(3):
        await asyncio.sleep(0.3)
        target = log.with_name(f"ctr.log.{k}")
        os.rename(log, target)  # what the kubelet does before asking to reopen
        await client.reopen_log()
        rotated.append(target)
    assert (await client.wait()).exit_status == 0
    files = [*rotated, log]
    lines = []
    for path in files:
        lines += join_lines(parse_log(path.read_bytes()), "stdout")
    assert lines == [b"line %d" % i for i in range(1, n + 1)]
    # Every file got part of the stream: the rotations really were mid-stream.
    assert all(path.stat().st_size > 0 for path in files)
    await client.delete()


@pytest.fixture
def tiny_fs(harness: Harness):  # type: ignore[no-untyped-def]
    mnt = harness.base / "tinyfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_disk_drops_lines_and_keeps_running(harness: Harness, tiny_fs: Path) -> None:
    script = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo line $i of noisy output; done"
    client = await harness.spawn(
        "diskfull", ["sh", "-c", script + "; sleep 0.2; exit 5"], log_path=tiny_fs / "c.log"
    )
    await client.start()
    exit = await asyncio.wait_for(client.wait(), 20)
    assert exit.exit_status == 5  # the container was not blocked by the log
    state = await client.state()
    assert state.log_dropped > 0
    assert "No space left" in state.log_error
    # What did get written is still well-formed records.
    records = parse_log(Path(tiny_fs / "c.log").read_bytes().rsplit(b"\n", 1)[0] + b"\n")
    assert records[0] == ("stdout", "F", b"line 1 of noisy output")
    await client.delete()
