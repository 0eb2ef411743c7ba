"""`pyctr snapshots`: looking inside the snapshotter after a real pull."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from pyctr.snapshotter.applier import chain_ids
from tests.images.conftest import ImageSet
from tests.support.daemon import PyctrDaemon


def test_snapshots_ls_info_usage_mount_rm(
    pyctrd: PyctrDaemon, test_images: ImageSet, tmp_path: Path
) -> None:
    ref = test_images.ref("test/busybox:1")
    assert pyctrd.ctl("images", "pull", "-q", ref).returncode == 0
    listing = json.loads(pyctrd.ctl("-o", "json", "snapshots", "ls").stdout)
    snaps = {s["key"]: s for s in listing["snapshots"]}
    top = test_images.busybox.chain_id
    assert listing["backend"] == "overlayfs"
    assert set(snaps) == set(chain_ids(test_images.busybox.diff_ids))
    assert snaps[top]["kind"] == "committed" and ref in snaps[top]["used_by"]
    table = pyctrd.ctl("snapshots", "ls").stdout
    assert "busybox" in table
    # Just made: the age reads so (it once read "20789 days ago", the epoch).
    assert "days ago" not in table and ("just now" in table or "minute" in table), table

    usage = json.loads(pyctrd.ctl("-o", "json", "snapshots", "usage", top).stdout)
    assert int(usage["inodes"]) >= 1 and int(usage["size_bytes"]) > 0
    info = json.loads(pyctrd.ctl("-o", "json", "snapshots", "info", top).stdout)
    assert info["parent"] == chain_ids(test_images.busybox.diff_ids)[0]

    # In use by the image: refused, and still there.
    proc = pyctrd.ctl("snapshots", "rm", top)
    assert proc.returncode == 1 and "in use" in proc.stderr
    assert pyctrd.ctl("snapshots", "info", top).returncode == 0

    target = tmp_path / "mnt"
    target.mkdir()
    proc = pyctrd.ctl("snapshots", "mount", top, str(target))
    assert proc.returncode == 0, proc.stderr
    try:
        assert (target / "etc" / "hello").read_text() == "hello from pyctr\n"
        assert os.access(target / "bin" / "busybox", os.X_OK)
    finally:
        subprocess.run(["umount", str(target)], check=True)

    missing = pyctrd.ctl("snapshots", "info", "sha256:" + "0" * 64)
    assert missing.returncode == 3 and "not found" in missing.stderr

    # Image gone and collected: nothing left in the snapshot or content dirs.
    assert pyctrd.ctl("images", "rm", ref).returncode == 0
    assert pyctrd.ctl("gc").returncode == 0
    assert json.loads(pyctrd.ctl("-o", "json", "snapshots", "ls").stdout).get("snapshots", []) == []
    assert not any((pyctrd.root / "snapshots").glob("*/fs"))
    assert not list((pyctrd.root / "content" / "blobs" / "sha256").iterdir())
