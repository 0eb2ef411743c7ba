"""Plain-code parts of the image side: references, content store, auth challenges, platforms."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from pyctr.daemon.errors import DataLoss, InvalidArgument, NotFound
from pyctr.daemon.images.auth import Credentials, parse_challenges
from pyctr.daemon.images.content import ContentStore, IngestWriter
from pyctr.daemon.images.reference import parse
from pyctr.daemon.images.registry import Platform, choose_platform, manifest_media_type

H = "a" * 64


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("me/app", "docker.io/me/app:latest"),
        ("index.docker.io/me/app:1", "docker.io/me/app:1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:v", "localhost:5000/a/b/c:v"),
        ("127.0.0.1:5000/app@sha256:" + H, "127.0.0.1:5000/app@sha256:" + H),
        ("app:1@sha256:" + H, "docker.io/library/app:1@sha256:" + H),
        ("[::1]:5000/app:x", "[::1]:5000/app:x"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("a.b/c__d.e-f:Tag_1.0-x", "a.b/c__d.e-f:Tag_1.0-x"),
    ],
)
def test_reference_normalisation(ref: str, normal: str) -> None:
    assert str(parse(ref)) == normal


def test_reference_parts() -> None:
    r = parse("app:1@sha256:" + H)
    assert (r.domain, r.path, r.tag, r.digest) == ("docker.io", "library/app", "1", "sha256:" + H)
    assert r.object == "sha256:" + H  # the digest wins when both are given
    assert parse("busybox").familiar == "busybox:latest"


@pytest.mark.parametrize(
    "bad",
    ["", "Busybox", "a:b:c", "app@sha256:abc", "app@md5:" + H, H, "a//b", "app:", "-app",
     "app:" + "t" * 129, "host:99999999/app", "sp ace", "new\nline", "a" * 300],
)  # fmt: skip
def test_reference_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(bad)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_content_ingest_commit_and_modes(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    data = b"x" * 5000
    w = store.writer(sha(data), len(data))
    w.write(data[:100])
    w.write(data[100:])
    w.commit()
    assert store.read(sha(data), 10_000) == data
    assert store.info(sha(data)).size == 5000
    assert store.path(sha(data)).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "content").stat().st_mode & 0o777 == 0o700
    assert store.ingests() == []
    with pytest.raises(NotFound):
        store.info(sha(b"other"))
    with pytest.raises(InvalidArgument):
        store.path("sha256:../../etc/passwd")


def test_content_refuses_wrong_digest_size_and_overflow(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    good = b"good bytes"
    w = store.writer(sha(good), len(good))
    w.write(b"evil bytes")
    with pytest.raises(DataLoss, match="hashes to"):
        w.commit()
    assert not store.exists(sha(good)) and store.ingests() == []

    w = store.writer(sha(good), len(good))
    with pytest.raises(DataLoss, match="larger than"):
        w.write(good + b"!")
    w.write(good[:4])
    with pytest.raises(DataLoss, match="got 4 bytes"):
        w.commit()
    assert not store.exists(sha(good))


def test_content_ingest_resumes_and_rehashes(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    data = bytes(range(256)) * 100
    w = store.writer(sha(data), len(data))
    w.write(data[:1000])
    w.close()
    [ing] = store.ingests()
    assert (ing.digest, ing.offset, ing.size) == (sha(data), 1000, len(data))
    w = store.writer(sha(data), len(data))
    assert w.offset == 1000
    w.write(data[1000:])
    w.commit()
    assert store.read(sha(data), len(data)) == data

    # A tampered partial is re-hashed, not trusted: the commit fails.
    other = b"y" * 3000
    w = store.writer(sha(other), len(other))
    w.write(other[:1000])
    w.close()
    (store.ingest_dir / f"sha256-{sha(other)[7:]}" / "data").write_bytes(b"z" * 1000)
    w = store.writer(sha(other), len(other))
    assert w.offset == 1000
    w.write(other[1000:])
    with pytest.raises(DataLoss):
        w.commit()


def test_second_writer_of_a_blob_is_refused(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    w = store.writer(sha(b"abc"), 3)
    try:
        with pytest.raises(Exception, match="being written"):
            IngestWriter(store, sha(b"abc"), 3)
    finally:
        w.close()


async def test_fetch_dedups_concurrent_downloads(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    data = b"shared layer" * 1000
    calls = 0

    async def download(w: IngestWriter) -> None:
        nonlocal calls
        calls += 1
        for i in range(0, len(data), 1000):
            w.write(data[i : i + 1000])
            await asyncio.sleep(0.001)

    results = await asyncio.gather(
        *(store.fetch(sha(data), len(data), download) for _ in range(10))
    )
    assert calls == 1 and sorted(results) == [False] * 9 + [True]
    assert store.read(sha(data), len(data)) == data


async def test_fetch_after_failed_download_tries_again(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content")
    data = b"abc" * 10

    async def broken(w: IngestWriter) -> None:
        w.write(b"zzz")
        raise ConnectionError("cut")

    async def good(w: IngestWriter) -> None:
        w.write(data[w.offset :])

    with pytest.raises(ConnectionError):
        await store.fetch(sha(data), len(data), broken)
    # The bad partial (3 wrong bytes) is resumed, fails verification, and is
    # downloaded once more from scratch.
    assert await store.fetch(sha(data), len(data), good)
    assert store.read(sha(data), 100) == data


def test_challenges_and_credentials() -> None:
    [c] = parse_challenges(
        'Bearer realm="https://auth.example/token",service="reg.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "reg.example",
        "scope": "repository:a/b:pull,push",
    }
    [basic] = parse_challenges('Basic realm="x"')
    assert basic.scheme == "basic" and basic.params == {"realm": "x"}
    creds = Credentials.from_fields(auth="YWxpY2U6czNjcmV0")
    assert (creds.username, creds.password) == ("alice", "s3cret")
    assert "s3cret" not in repr(creds)
    with pytest.raises(InvalidArgument):
        Credentials.from_fields(auth="not base64!")


def test_platform_choice() -> None:
    index = {
        "manifests": [
            {"mediaType": "m", "digest": "sha256:" + "1" * 64, "size": 1,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
            {"mediaType": "m", "digest": "sha256:" + "2" * 64, "size": 1,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"mediaType": "m", "digest": "sha256:" + "3" * 64, "size": 1,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "m", "digest": "sha256:" + "4" * 64, "size": 1,
             "platform": {"os": "unknown", "architecture": "unknown"}},
        ]
    }  # fmt: skip
    pick = choose_platform
    assert pick(index, Platform.parse("linux/arm/v7"), "x").digest.endswith("2" * 64)
    assert pick(index, Platform.parse("linux/arm64"), "x").digest.endswith("3" * 64)
    with pytest.raises(NotFound, match="linux/amd64"):
        pick(index, Platform.parse("linux/amd64"), "x")
    with pytest.raises(InvalidArgument):
        Platform.parse("linux")


def test_manifest_media_types() -> None:
    from pyctr.daemon.errors import FailedPrecondition

    assert manifest_media_type(b'{"manifests": []}', "", "x").endswith("index.v1+json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        manifest_media_type(b"<html>", "text/html", "x")
    with pytest.raises(FailedPrecondition, match="schema 1"):
        manifest_media_type(b'{"schemaVersion": 1}', "", "x")
    with pytest.raises(FailedPrecondition, match="unsupported"):
        manifest_media_type(b'{"mediaType": "application/x-foo"}', "", "x")
