"""Reading a blob while it downloads: bytes as they come, the end only once verified."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from pyctr.daemon.errors import DataLoss
from pyctr.daemon.images.content import ContentStore, DownloadStopped, IngestWriter

DATA = bytes(range(256)) * 4000  # 1000 KiB


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_all(follower, out: list[bytes], errors: list[BaseException]) -> None:  # type: ignore[no-untyped-def]
    try:
        while chunk := follower.read(7000):
            out.append(chunk)
    except BaseException as e:  # handed to the test thread
        errors.append(e)


def _follow(w: IngestWriter) -> tuple[threading.Thread, list[bytes], list[BaseException]]:
    out: list[bytes] = []
    errors: list[BaseException] = []
    t = threading.Thread(target=_read_all, args=(w.follow(), out, errors))
    t.start()
    return t, out, errors


def test_follower_gets_bytes_as_written_and_ends_after_commit(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    w = store.writer(sha(DATA), len(DATA))
    t, out, errors = _follow(w)
    for i in range(0, len(DATA), 100_000):
        w.write(DATA[i : i + 100_000])
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while sum(map(len, out)) < len(DATA) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Everything has arrived, but the end waits for the digest check.
    assert sum(map(len, out)) == len(DATA) and t.is_alive()
    w.commit()
    t.join(10)
    assert not t.is_alive() and errors == []
    assert b"".join(out) == DATA


def test_follower_fails_when_the_blob_fails_verification(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    w = store.writer(sha(DATA), len(DATA))
    t, out, errors = _follow(w)
    w.write(b"\xff" + DATA[1:])
    with pytest.raises(DataLoss):
        w.commit()
    t.join(10)
    assert [type(e) for e in errors] == [DownloadStopped]


def test_follower_fails_when_the_download_stops(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    w = store.writer(sha(DATA), len(DATA))
    t, out, errors = _follow(w)
    w.write(DATA[:1000])
    w.close()  # cut off: the partial ingest stays for a resume, the follower stops
    t.join(10)
    assert [type(e) for e in errors] == [DownloadStopped]
    assert b"".join(out) == DATA[:1000]


def test_follower_goes_on_after_a_reset(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    w = store.writer(sha(DATA), len(DATA))
    follower = w.follow()
    w.write(DATA[:5000])
    assert follower.read(3000) == DATA[:3000]
    w.reset()  # the server ignored Range: the same bytes come again from 0
    w.write(DATA[:4000])
    assert follower.read(10_000) == DATA[3000:4000]
    w.write(DATA[4000:])
    w.commit()
    rest = b""
    while chunk := follower.read(1 << 20):
        rest += chunk
    assert rest == DATA[4000:]
    follower.close()
