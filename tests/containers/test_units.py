"""Plain-code parts: reading CRI logs back, the cached container store, CLI parsing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pyctr.ctl.containers import duration, parse_signal, status_text
from pyctr.ctl.run import _mount
from pyctr.daemon.errors import AlreadyExists, InvalidArgument, NotFound
from pyctr.daemon.metadata import Metadata
from pyctr.daemon.runtime.cache import CachedStore
from pyctr.daemon.runtime.logs import LogReader, parse_record, parse_timestamp, tail_offset
from pyctr.daemon.runtime.records import Container
from pyctr.daemon.runtime.states import Status
from pyctr.daemon.runtime.store import ContainerStore, new_id
from pyctr.proto import containers_pb2 as pb
from pyctr.shim.crilog import CriLogWriter, rfc3339nano

# -- the CRI log format, read back -------------------------------------------


def test_timestamps_round_trip_the_shims_format() -> None:
    for ns in (0, 1, 1_700_000_000_123_456_789, time.time_ns()):
        assert parse_timestamp(rfc3339nano(ns)) == ns
    assert parse_timestamp(b"2024-01-01T01:00:00.5+01:00") == 1_704_067_200_500_000_000
    assert parse_timestamp(b"2024-01-01T00:00:00Z") == 1_704_067_200_000_000_000
    for bad in (b"", b"yesterday", b"2024-01-01 00:00:00Z", b"2024-01-01T00:00:00.x1Z"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_records_give_back_the_bytes() -> None:
    full = parse_record(b"2024-01-01T00:00:00.000000001Z stdout F hello world")
    assert full is not None and (full.stream, full.data) == ("stdout", b"hello world\n")
    part = parse_record(b"2024-01-01T00:00:00Z stderr P abc")
    assert part is not None and (part.stream, part.data) == ("stderr", b"abc")
    empty = parse_record(b"2024-01-01T00:00:00Z stdout F ")
    assert empty is not None and empty.data == b"\n"
    for junk in (b"", b"garbage", b"2024-01-01T00:00:00Z stdin F x", b"now stdout F x"):
        assert parse_record(junk) is None


def _write_log(path: Path, chunks: list[tuple[str, bytes]]) -> None:
    writer = CriLogWriter(str(path))
    for stream, data in chunks:
        writer.write(stream.encode(), data)
    writer.flush(b"stdout")
    writer.flush(b"stderr")
    writer.close()


def _read_all(fd: int, offset: int = 0) -> bytes:
    reader, out = LogReader(fd, offset), b""
    while (records := reader.read(limit=1000)) is not None:
        out += b"".join(r.data for r in records)
    return out


def test_log_written_by_the_shim_reads_back_whole(tmp_path: Path) -> None:
    long_line = b"x" * 40_000 + b"\n"  # longer than a record: P, P, F
    chunks = [("stdout", b"one\ntw"), ("stdout", b"o\n"), ("stdout", long_line), ("stdout", b"3\n")]
    path = tmp_path / "c.log"
    _write_log(path, chunks)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_all(fd) == b"one\ntwo\n" + long_line + b"3\n"
        # tail counts lines, not records: the long line's P pieces come along.
        assert _read_all(fd, tail_offset(fd, 2)) == long_line + b"3\n"
        assert _read_all(fd, tail_offset(fd, 1)) == b"3\n"
        assert _read_all(fd, tail_offset(fd, 0)) == b""
        assert _read_all(fd, tail_offset(fd, 99)) == _read_all(fd)
    finally:
        os.close(fd)


def test_tail_scans_back_across_blocks(tmp_path: Path) -> None:
    lines = [b"line %d\n" % i for i in range(20_000)]  # ~1 MB of records: many blocks
    path = tmp_path / "big.log"
    _write_log(path, [("stderr" if i % 3 else "stdout", line) for i, line in enumerate(lines)])
    fd = os.open(path, os.O_RDONLY)
    try:
        for n in (1, 7, 1000, 19_999):
            assert _read_all(fd, tail_offset(fd, n)) == b"".join(lines[-n:])
    finally:
        os.close(fd)


def test_reader_keeps_a_half_written_record_for_later(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    record = rfc3339nano(time.time_ns()) + b" stdout F later\n"
    path.write_bytes(record[:20])
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = LogReader(fd)
        assert reader.read() == []  # bytes, but no complete record yet
        assert reader.read() is None
        with open(path, "ab") as f:
            f.write(record[20:])
        records = reader.read()
        assert records is not None and [r.data for r in records] == [b"later\n"]
        path.write_bytes(record.replace(b"later", b"new"))  # truncated, rewritten shorter
        records = reader.read()
        assert records is not None and [r.data for r in records] == [b"new\n"]
        since = LogReader(fd, 0, since=time.time_ns() + 10**9)
        assert since.read() == []
    finally:
        os.close(fd)


# -- the cached store --------------------------------------------------------


def _record(name: str, cid: str | None = None, **kw: object) -> Container:
    return Container(id=cid or new_id(), name=name, spec={"process": {"args": ["sh"]}}, **kw)  # type: ignore[arg-type]


def test_cached_store_answers_like_the_table(tmp_path: Path) -> None:
    db = Metadata(tmp_path / "meta.db")
    store = CachedStore(db)
    a = _record("alpha", "abc" + "0" * 61)
    b = _record("beta", "abd" + "0" * 61, labels={"k": "v"})
    store.add(a)
    store.add(b)
    with pytest.raises(AlreadyExists):
        store.add(_record("alpha"))
    assert store.resolve("abc").id == a.id
    assert store.resolve("beta").id == b.id
    assert store.resolve(a.id).name == "alpha"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        store.resolve("ab")
    for missing in ("abe", "gamma", "", "x" * 300):
        with pytest.raises(NotFound):
            store.resolve(missing)
    with pytest.raises(NotFound):
        store.resolve("alpha", kind="sandbox")
    hexname = _record("abc")  # a name that is also a prefix of a's ID: the name wins
    store.add(hexname)
    assert store.resolve("abc").id == hexname.id and store.name_taken("abc")
    store.delete(hexname.id)
    assert not store.name_taken("abc")

    updated = store.update(a.id, status=Status.EXITED, exit_code=3)
    assert (updated.status, updated.exit_code) == (Status.EXITED, 3)
    # A copy: assigning a field of what we got does not change the cache.
    updated.status = Status.UNKNOWN
    updated.labels["y"] = "z"
    assert store.get(a.id).status == Status.EXITED
    assert "y" not in store.resolve("alpha").labels
    assert [c.name for c in store.list()] == ["alpha", "beta"]
    store.delete(b.id)
    with pytest.raises(NotFound):
        store.resolve("beta")
    # The table holds exactly what the cache says, for the next daemon.
    fresh = ContainerStore(db)
    assert [(c.id, c.status, c.exit_code) for c in fresh.list()] == [(a.id, Status.EXITED, 3)]
    assert [(c.id, c.status) for c in CachedStore(db).list()] == [(a.id, Status.EXITED)]
    db.close()


def test_cached_store_finds_a_record_written_around_it(tmp_path: Path) -> None:
    db = Metadata(tmp_path / "meta.db")
    store = CachedStore(db)
    other = _record("elsewhere")
    ContainerStore(db).add(other)
    assert store.get(other.id).name == "elsewhere"
    db.close()


# -- client-side parsing and formatting ---------------------------------------


def test_signal_names() -> None:
    assert parse_signal("9") == parse_signal("KILL") == parse_signal("sigkill") == 9
    assert parse_signal("TERM") == 15
    for bad in ("NOPE", "0", "999"):
        with pytest.raises(Exception, match="signal"):
            parse_signal(bad)


def test_mount_flag() -> None:
    m = _mount("/data:/mnt:ro")
    assert (m.source, m.destination, m.readonly) == ("/data", "/mnt", True)
    assert _mount("rel:/x").source == os.path.abspath("rel")
    for bad in ("/only", "/a:/b:rx", ":/b", "/a:/b:ro:x"):
        with pytest.raises(Exception, match="mount"):
            _mount(bad)


def test_status_column() -> None:
    now = 1_000 * 10**9
    running = pb.ContainerInfo(status="running", started_at=now - 3 * 10**9)
    exited = pb.ContainerInfo(status="exited", exit_code=7, finished_at=now - 125 * 10**9)
    assert status_text(running, now) == "Up 3s"
    assert status_text(exited, now) == "Exited (7) 2m ago"
    assert status_text(pb.ContainerInfo(status="created"), now) == "Created"
    assert duration(90_000) == "1d"
