"""image_sub_path resolution: links resolved as inside the image, never out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.images.volumes import resolve_in_image


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    (root / "usr" / "share" / "data").mkdir(parents=True)
    (root / "usr" / "share" / "data" / "f").write_text("f")
    (root / "etc").mkdir()
    os.symlink("/usr/share", root / "abs")  # absolute: the image's /usr/share
    os.symlink("../../../../../../etc", root / "usr" / "up")  # climbs past the root
    os.symlink("share/data", root / "usr" / "rel")
    os.symlink("loop", root / "loop")
    return root


@pytest.mark.parametrize(
    ("sub", "want"),
    [
        ("", "."),
        ("usr/share/data", "usr/share/data"),
        ("./usr//share/", "usr/share"),
        ("abs/data", "usr/share/data"),  # never the host's /usr/share
        ("usr/rel/f", "usr/share/data/f"),
        ("usr/up", "etc"),  # `..` stops at the image's root
    ],
)
def test_resolves_inside_the_image(image: Path, sub: str, want: str) -> None:
    assert resolve_in_image(image, sub) == (image / want if want != "." else image)


def test_up_then_missing_is_refused(image: Path) -> None:
    # usr/up resolves to the image's /etc, which has no passwd (the host's has).
    with pytest.raises(InvalidArgument, match="no 'passwd' in the image"):
        resolve_in_image(image, "usr/up/passwd")


@pytest.mark.parametrize(
    ("sub", "words"),
    [
        ("/usr", "must be a relative path"),
        ("usr/../..", "must not contain '..'"),
        ("nope", "no 'nope' in the image"),
        ("usr/share/data/f/x", "no 'x' in the image"),  # through a file
        ("loop", "too many links"),
    ],
)
def test_refused(image: Path, sub: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        resolve_in_image(image, sub)
