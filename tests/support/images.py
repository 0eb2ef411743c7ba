"""Test images from local material, written as OCI layouts and pushed with skopeo.

    layout = tmp_path / "oci"
    img = build_image(layout, "v1", [busybox_layer(), files_layer({"etc/hello": b"hi"})],
                      compression="gzip", user="1000", labels={"a": "b"})
    push(layout, "v1", f"{registry.host}/test/app:v1")
    idx = build_index(layout, "multi", {"linux/amd64": [...layers], "linux/arm64": [...]})
    push(layout, "multi", f"{registry.host}/test/multi:1", all_platforms=True)

We write the blobs ourselves (tar via tarfile; gzip/zstd/none), so a test
knows every digest it expects; skopeo, an independent implementation, does the
push over the real distribution API. Layers are deterministic (fixed mtimes),
so the same content gives the same digests in every run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

BUSYBOX = Path("/bin/busybox")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
MTIME = 1_700_000_000


def host_platform() -> str:
    """This machine's platform as os/arch, the one pyctrd pulls by default."""
    import platform

    machine = platform.machine()
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


HOST_PLATFORM = host_platform()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """An uncompressed tar of the given members (TarInfo, or (TarInfo, data))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            if isinstance(e, tuple):
                info, data = e
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(e)
    return buf.getvalue()


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: Any
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def files_layer(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    """A layer of regular files (parent directories added as needed)."""
    entries: list[Any] = []
    seen: set[str] = set()
    for path in [*dirs, *files]:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                entries.append(_info(d, tarfile.DIRTYPE, 0o755))
    for d in dirs:
        if d not in seen:
            seen.add(d)
            entries.append(_info(d, tarfile.DIRTYPE, 0o755))
    for path, data in files.items():
        entries.append((_info(path.strip("/")), data))
    return tar_bytes(entries)


_BUSYBOX_LAYER: bytes | None = None


def busybox_layer() -> bytes:
    """bin/busybox with sh, ls, cat, echo, sleep, id, env links; plus etc and tmp."""
    global _BUSYBOX_LAYER
    if _BUSYBOX_LAYER is None:
        entries: list[Any] = [
            _info("bin", tarfile.DIRTYPE, 0o755),
            _info("etc", tarfile.DIRTYPE, 0o755),
            _info("tmp", tarfile.DIRTYPE, 0o1777),
            (_info("bin/busybox", mode=0o755), BUSYBOX.read_bytes()),
        ]
        for tool in ("sh", "ls", "cat", "echo", "sleep", "id", "env", "true", "false", "wc"):
            entries.append(_info(f"bin/{tool}", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        entries.append((_info("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n"))
        entries.append((_info("etc/group"), b"root:x:0:\n"))
        _BUSYBOX_LAYER = tar_bytes(entries)
    return _BUSYBOX_LAYER


def compress(tar: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(tar)
    if compression == "none":
        return tar
    raise ValueError(compression)


@dataclass
class Blob:
    digest: str
    size: int
    media_type: str


@dataclass
class BuiltImage:
    manifest: Blob
    config: Blob
    layers: list[Blob]
    diff_ids: list[str]
    platform: str
    config_doc: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.config.digest

    @property
    def size(self) -> int:
        return self.manifest.size + self.config.size + sum(x.size for x in self.layers)

    @property
    def chain_id(self) -> str:
        chain = ""
        for d in self.diff_ids:
            chain = d if not chain else sha256(f"{chain} {d}".encode())
        return chain


@dataclass
class BuiltIndex:
    index: Blob
    images: dict[str, BuiltImage]


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def _tag(layout: Path, tag: str, desc: dict[str, Any]) -> None:
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout / "index.json"
    index = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    )
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    index["manifests"].append({**desc, "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index))


def write_image(
    layout: Path,
    layers: list[bytes],
    compression: str = "gzip",
    platform: str = HOST_PLATFORM,
    user: str = "",
    labels: dict[str, str] | None = None,
    env: list[str] | None = None,
    cmd: list[str] | None = None,
    entrypoint: list[str] | None = None,
    workdir: str = "",
    extra_config: dict[str, Any] | None = None,
) -> BuiltImage:
    """Write an image's blobs into an OCI layout (untagged); returns its digests."""
    os_, arch, *variant = platform.split("/")
    blobs = []
    diff_ids = []
    for tar in layers:
        data = compress(tar, compression)
        blobs.append(Blob(_write_blob(layout, data), len(data), LAYER_TYPES[compression]))
        diff_ids.append(sha256(tar))
    inner: dict[str, Any] = {"Env": env or ["PATH=/bin"], "Cmd": cmd or ["/bin/sh"]}
    if user:
        inner["User"] = user
    if labels:
        inner["Labels"] = labels
    if entrypoint:
        inner["Entrypoint"] = entrypoint
    if workdir:
        inner["WorkingDir"] = workdir
    config_doc: dict[str, Any] = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": os_,
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "pyctr tests"}],
        **(extra_config or {}),
    }
    if variant:
        config_doc["variant"] = variant[0]
    config = json.dumps(config_doc, sort_keys=True).encode()
    config_blob = Blob(_write_blob(layout, config), len(config), OCI_CONFIG)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_blob.digest,
                "size": config_blob.size,
            },
            "layers": [
                {"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs
            ],
        },
        sort_keys=True,
    ).encode()
    m = Blob(_write_blob(layout, manifest), len(manifest), OCI_MANIFEST)
    return BuiltImage(m, config_blob, blobs, diff_ids, platform, config_doc)


def build_image(layout: Path, tag: str, layers: list[bytes], **kw: Any) -> BuiltImage:
    """Write an image and tag it `tag` in the layout's index.json."""
    img = write_image(layout, layers, **kw)
    _tag(layout, tag, {"mediaType": OCI_MANIFEST, "digest": img.manifest.digest,
                       "size": img.manifest.size})  # fmt: skip
    return img


def _platform_obj(platform: str) -> dict[str, str]:
    os_, arch, *variant = platform.split("/")
    out = {"os": os_, "architecture": arch}
    if variant:
        out["variant"] = variant[0]
    return out


def build_index(
    layout: Path, tag: str, per_platform: dict[str, list[bytes]], **kw: Any
) -> BuiltIndex:
    """A multi-platform image: one manifest per platform under an OCI index."""
    images = {
        p: write_image(layout, layers, platform=p, **kw) for p, layers in per_platform.items()
    }
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": img.manifest.digest,
                    "size": img.manifest.size,
                    "platform": _platform_obj(p),
                }
                for p, img in images.items()
            ],
        },
        sort_keys=True,
    ).encode()
    blob = Blob(_write_blob(layout, index), len(index), OCI_INDEX)
    _tag(layout, tag, {"mediaType": OCI_INDEX, "digest": blob.digest, "size": blob.size})
    return BuiltIndex(blob, images)


def push(
    layout: Path,
    tag: str,
    dest: str,
    creds: str = "",
    all_platforms: bool = False,
    docker_format: bool = False,
    cert_dir: Path | None = None,
) -> None:
    """skopeo copy oci:LAYOUT:TAG docker://DEST (plain HTTP, no TLS checks)."""
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if creds:
        cmd += ["--dest-creds", creds]
    if all_platforms:
        cmd += ["--all"]
    if cert_dir is not None:
        cmd += ["--dest-cert-dir", str(cert_dir)]  # client.cert / client.key
    if docker_format:
        cmd += ["--format", "v2s2"]
    cmd += [f"oci:{layout}:{tag}", f"docker://{dest}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"skopeo copy failed: {res.stderr.strip()}")


def push_busybox(layout: Path, dest: str, **kw: Any) -> BuiltImage:
    """The usual test image in one call: busybox (sh, ls, cat, sleep, ...) pushed to `dest`.

    `dest` is `host:port/repo:tag`; `kw` goes to write_image (user, env, cmd,
    entrypoint, workdir, labels, compression, platform).
    """
    tag = dest.rpartition(":")[2]
    img = build_image(layout, tag, [busybox_layer()], **kw)
    push(layout, tag, dest)
    return img
