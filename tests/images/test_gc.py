"""Garbage collection and leases, on an in-process ImageManager with the real
snapshotter and registry (so a test can hold a pull in mid-flight)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.context import Context
from pyctr.daemon.daemon import open_images
from pyctr.daemon.errors import NotFound
from pyctr.daemon.images.content import ingest_ref
from pyctr.daemon.images.manager import ImageManager
from pyctr.daemon.metadata import Metadata
from tests.images.conftest import ImageSet
from tests.images.faultproxy import FaultProxy


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ImageManager]:
    cfg = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    cfg.registry.timeout = 5.0
    db = Metadata(tmp_path / "root" / "meta.db")
    cgroups = Cgroups.resolve("cgroupfs")
    ctx = Context(config=cfg, config_file=None, db=db, runc_path=None, cgroups=cgroups)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(db.close)
        yield await open_images(ctx, stack)


def has_snapshot(m: ImageManager, key: str) -> bool:
    try:
        m.snapshotter.stat(key)
        return True
    except NotFound:
        return False


def blobs(m: ImageManager) -> set[str]:
    return {b.digest for b in m.content.list()}


async def test_shared_snapshots_stay_until_last_image_goes(
    manager: ImageManager, test_images: ImageSet
) -> None:
    gz, zs = test_images.busybox, test_images.zstd
    assert gz.chain_id == zs.chain_id  # same tars, different compression
    await manager.pull(test_images.ref("test/busybox:1"))
    await manager.pull(test_images.ref("test/zstd:1"))
    await manager.remove(gz.id)
    assert not {gz.manifest.digest, gz.config.digest, gz.layers[0].digest} & blobs(manager)
    assert {zs.manifest.digest, zs.config.digest, zs.layers[0].digest} <= blobs(manager)
    assert has_snapshot(manager, zs.chain_id)
    await manager.remove(test_images.ref("test/zstd:1"))
    assert blobs(manager) == set()
    assert list(manager.snapshotter.walk()) == []


async def test_container_snapshot_keeps_its_image_layers(
    manager: ImageManager, test_images: ImageSet
) -> None:
    img = test_images.busybox
    image = await manager.pull(test_images.ref("test/busybox:1"))
    manager.snapshotter.prepare("ctr-1", parent=image.chain_id)
    await manager.remove(img.id)
    assert blobs(manager) == set()
    assert has_snapshot(manager, img.chain_id)
    manager.snapshotter.remove("ctr-1")
    result = await manager.collect()
    assert set(result.snapshots_removed) == {img.chain_id, img.diff_ids[0]}


async def test_gc_during_a_pull_keeps_what_the_pull_holds(
    manager: ImageManager, test_images: ImageSet
) -> None:
    img = test_images.busybox
    with FaultProxy(test_images.registry.port) as proxy:
        proxy.stall_digest = img.layers[0].digest
        pull = asyncio.create_task(manager.pull(f"{proxy.host}/test/busybox:1"))
        deadline = time.monotonic() + 10
        while proxy.blob_gets(img.layers[0].digest) == 0:
            assert time.monotonic() < deadline and not pull.done()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the small layer lands meanwhile
        await manager.collect()
        held = {img.manifest.digest, img.config.digest, img.layers[1].digest}
        assert held <= blobs(manager)
        pull.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pull
    # The failed pull's lease keeps its content for a retry...
    await manager.collect()
    assert held <= blobs(manager)
    # ...until it expires.
    for lease in manager.leases.list():
        manager.leases.set_expiry(lease.id, time.time() - 1)
    result = await manager.collect()
    assert result.leases_expired == 1
    assert blobs(manager) == set()
    assert manager.content.ingests() == []


async def test_ingests_survive_restart_only_under_a_live_lease(
    manager: ImageManager, test_images: ImageSet
) -> None:
    store = manager.content
    leased, loose = (b"leased" * 100, b"loose" * 100)
    for data in (leased, loose):
        w = store.writer(_sha(data), len(data))
        w.write(data[:10])
        w.close()
    lease = manager.leases.create(ttl=60)
    manager.leases.add(lease.id, "ingest", [ingest_ref(_sha(leased))])

    # What the daemon does at start.
    async with contextlib.AsyncExitStack() as stack:
        again = await open_images(manager.ctx, stack)
        assert [i.digest for i in store.ingests()] == [_sha(leased)]
        manager.leases.set_expiry(lease.id, time.time() - 1)
        await again.collect()
        assert store.ingests() == []


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()
