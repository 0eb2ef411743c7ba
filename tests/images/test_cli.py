"""`pyctr images ...`, `pyctr content ls`, `pyctr gc` against a real daemon."""

from __future__ import annotations

import json

from tests.images.conftest import ImageSet
from tests.support.daemon import PyctrDaemon


def test_images_cli_round_trip(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    img = test_images.busybox
    ref = test_images.ref("test/busybox:1")

    pulled = pyctrd.ctl("images", "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    # Not a terminal: plain progress lines, one per layer state, then the result.
    assert f"{img.layers[0].digest[7:19]}: downloading" in pulled.stdout
    assert pulled.stdout.strip().endswith(f"{ref}: {img.id}")

    quiet = pyctrd.ctl("images", "pull", "-q", ref)
    assert quiet.stdout.strip() == img.id

    table = pyctrd.ctl("images", "ls")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["REPOSITORY", "TAG", "IMAGE", "ID"][:3]
    assert row.split()[:3] == [test_images.ref("test/busybox"), "1", img.id[7:19]]

    listed = json.loads(pyctrd.ctl("images", "ls", "-o", "json").stdout)
    assert [i["id"] for i in listed] == [img.id]
    assert listed[0]["repo_tags"] == [ref]

    tagged = pyctrd.ctl("images", "tag", ref, "local/mine:v2")
    assert tagged.returncode == 0, tagged.stderr
    inspected = json.loads(pyctrd.ctl("images", "inspect", "local/mine:v2").stdout)
    assert inspected["id"] == img.id
    assert sorted(inspected["repo_tags"]) == sorted([ref, "docker.io/local/mine:v2"])
    assert inspected["config"]["config"]["User"] == "1000:1000"
    assert inspected["manifest"]["config"]["digest"] == img.config.digest

    content = pyctrd.ctl("content", "ls", "-q").stdout.split()
    assert sorted(content) == sorted(
        [img.manifest.digest, img.config.digest, *(x.digest for x in img.layers)]
    )

    untag = pyctrd.ctl("images", "rm", "local/mine:v2")
    assert untag.returncode == 0 and "untagged" in untag.stdout
    removed = pyctrd.ctl("images", "rm", img.id)
    assert removed.returncode == 0 and f"deleted: {img.id}" in removed.stdout
    assert json.loads(pyctrd.ctl("images", "ls", "-o", "json").stdout) == []
    assert pyctrd.ctl("content", "ls", "-q").stdout.strip() == ""

    gc = pyctrd.ctl("gc")
    assert gc.returncode == 0 and gc.stdout.startswith("removed 0 blobs")


def test_images_cli_errors(pyctrd: PyctrDaemon, test_images: ImageSet) -> None:
    missing = pyctrd.ctl("images", "inspect", "not/here:1")
    assert missing.returncode == 3 and "not found" in missing.stderr
    bad = pyctrd.ctl("images", "pull", test_images.ref("test/busybox:nope"))
    assert bad.returncode == 3 and "manifest unknown" in bad.stderr
    plat = pyctrd.ctl("images", "pull", "--platform", "linux", test_images.ref("test/small:1"))
    assert plat.returncode == 1 and "os/arch" in plat.stderr
    # A registry nobody answers on is the daemon's UNAVAILABLE, not "pyctrd is down".
    gone = pyctrd.ctl("images", "pull", "127.0.0.1:1/test/small:1")
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr, gone.stderr
    assert "127.0.0.1:1" in gone.stderr and "cannot reach pyctrd" not in gone.stderr
