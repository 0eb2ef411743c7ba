"""Benchmark images: deterministic content, built once and cached as OCI layouts.

Each image is busybox plus generated layers that mix many small files with a
few large ones, half of the bytes compressible (text over a 16-letter
alphabet, about 2:1 under gzip) and half not (raw PRNG output). Content comes
from a PRNG seeded by the image's parameters, so the same parameters give the
same digests on every machine, and the layout is cached under
/var/tmp/pyctr-bench-cache/<name>-<hash of parameters> so reruns skip the
(slow) generation and gzip.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CACHE = Path("/var/tmp/pyctr-bench-cache")
TAG = "1"
FORMAT_VERSION = 1  # bump when the generator changes, so old caches are not reused

# Maps each byte to one of 16 letters: 4 bits of entropy per byte.
_TEXT = bytes(b"etaoinshrdlucmfw"[i % 16] for i in range(256))


@dataclass(frozen=True)
class ImageSpec:
    name: str
    layers: int = 0  # generated layers on top of busybox
    layer_mib: int = 0  # uncompressed size of each generated layer
    small_files: int = 0  # per layer, 1-64 KiB each; the rest is in 2 large files
    cmd: tuple[str, ...] = ("/bin/sh",)

    @property
    def key(self) -> str:
        params = json.dumps({**asdict(self), "v": FORMAT_VERSION}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(params.encode()).hexdigest()[:12]}"


SPECS = {
    "small": ImageSpec("small"),
    # The pod's infra container: busybox sleeping forever.
    "pause": ImageSpec("pause", cmd=("/bin/sleep", "2147483647")),
    "medium": ImageSpec("medium", layers=10, layer_mib=5, small_files=100),
    "large": ImageSpec("large", layers=5, layer_mib=100, small_files=2000),
}


def _content(rnd: random.Random, size: int, compressible: bool) -> bytes:
    data = rnd.randbytes(size)
    return data.translate(_TEXT) if compressible else data


def _generated_layer(spec: ImageSpec, index: int) -> dict[str, bytes]:
    rnd = random.Random(f"{spec.key}/{index}")
    files: dict[str, bytes] = {}
    budget = spec.layer_mib * 1024 * 1024
    for i in range(spec.small_files):
        size = rnd.randint(1024, 64 * 1024)
        files[f"data/l{index}/small/{i // 100:03d}/f{i:05d}"] = _content(rnd, size, i % 2 == 0)
        budget -= size
    half = max(budget // 2, 0)
    files[f"data/l{index}/large-text.bin"] = _content(rnd, half, True)
    files[f"data/l{index}/large-random.bin"] = _content(rnd, max(budget - half, 0), False)
    return files


def layout(spec: ImageSpec) -> tuple[Path, dict[str, Any]]:
    """The cached OCI layout for `spec` (tag "1") and its sizes; builds it if missing."""
    from tests.support import images as oci  # the test image builder

    path = CACHE / spec.key
    info_path = path / "bench-info.json"
    if info_path.exists():
        return path, json.loads(info_path.read_text())
    shutil.rmtree(path, ignore_errors=True)
    tmp = CACHE / f".{spec.key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tars = [oci.busybox_layer()]
    tars += [oci.files_layer(_generated_layer(spec, i)) for i in range(spec.layers)]
    img = oci.build_image(tmp, TAG, tars, compression="gzip", cmd=list(spec.cmd))
    info = {
        "layers": len(tars),
        "compressed_bytes": img.size,
        "uncompressed_bytes": sum(len(t) for t in tars),
        "manifest": img.manifest.digest,
    }
    (tmp / "bench-info.json").write_text(json.dumps(info))
    tmp.rename(path)  # complete layouts only: a crash mid-build leaves a .tmp dir
    return path, info
