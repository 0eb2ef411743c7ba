"""`snapshotter.max_parallel_unpack` drives how many layers a pull extracts at once.

An in-process ImageManager pulls from the real test registry into the real
snapshotter; the only thing added is a spy on the applier's constructor, to
read the parallelism the pull path actually handed it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.config import Config
from pyctr.daemon.context import Context
from pyctr.daemon.daemon import open_images
from pyctr.daemon.metadata import Metadata
from pyctr.snapshotter import applier
from tests.images.conftest import ImageSet


@pytest.mark.parametrize("parallel", [1, 3])
async def test_pull_unpacks_with_configured_parallelism(
    tmp_path: Path, test_images: ImageSet, monkeypatch: pytest.MonkeyPatch, parallel: int
) -> None:
    seen: list[int] = []
    real_init = applier.Unpacker.__init__

    def spy(self: applier.Unpacker, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(self.max_parallel)

    monkeypatch.setattr(applier.Unpacker, "__init__", spy)
    cfg = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    cfg.snapshotter.max_parallel_unpack = parallel
    db = Metadata(tmp_path / "root" / "meta.db")
    cgroups = Cgroups.resolve("cgroupfs")
    ctx = Context(config=cfg, config_file=None, db=db, runc_path=None, cgroups=cgroups)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(db.close)
        m = await open_images(ctx, stack)
        image = await m.pull(test_images.ref("test/busybox:1"))
        assert image.chain_id == test_images.busybox.chain_id
    assert seen == [parallel]
