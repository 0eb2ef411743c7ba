"""Image references: parse and normalise them the way the kubelet and docker do.

    busybox                      -> docker.io/library/busybox:latest
    me/app:1.0                   -> docker.io/me/app:1.0
    127.0.0.1:5000/app@sha256:.. -> 127.0.0.1:5000/app@sha256:..
    app:1.0@sha256:..            -> docker.io/library/app:1.0@sha256:..  (the digest wins)

A reference names a repository (domain + path) and optionally a tag and a
digest; with neither, the tag is `latest`. Anything malformed is refused with
InvalidArgument naming what is wrong, since references come from pod specs and
command lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyctr.daemon.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
DEFAULT_TAG = "latest"
MAX_NAME = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]{{1,5}})?"
)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_HEX64_RE = re.compile(r"[a-f0-9]{64}")


def validate_digest(digest: str) -> str:
    """Return the digest if it is `sha256:<64 hex>` (or sha512), else raise."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}")
    return digest


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.fullmatch(value))


def is_image_id(value: str) -> bool:
    """A bare 64-hex image ID, as docker prints it."""
    return bool(_HEX64_RE.fullmatch(value))


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        """`domain/path`, the name a RepoDigest or RepoTag starts with."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if any."""
        return self.digest or self.tag

    def __str__(self) -> str:
        return self.repository + self._suffix

    @property
    def _suffix(self) -> str:
        """`:tag`, `@digest`, both or neither, as the reference has them."""
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def tagged_name(self) -> str:
        """`repo:tag`, or "" for a digest-only reference."""
        return f"{self.repository}:{self.tag}" if self.tag else ""

    def with_digest(self, digest: str) -> str:
        """`repo@digest`, the RepoDigest form."""
        return f"{self.repository}@{digest}"

    @property
    def familiar(self) -> str:
        """The short form people type: `busybox:latest`, `me/app:1`."""
        if self.domain == DEFAULT_DOMAIN:
            return self.path.removeprefix("library/") + self._suffix
        return self.repository + self._suffix


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    # Like docker: the first component is a registry host only if it looks
    # like one (has a dot or a port, or is localhost, or has upper case).
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    return domain, path


def parse(ref: str) -> Reference:
    """Normalise a reference as the kubelet would; InvalidArgument if malformed."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("image reference is empty")
    if len(ref) > 4096 or any(c.isspace() or ord(c) < 0x20 for c in ref):
        raise InvalidArgument(f"invalid image reference {ref[:300]!r}")
    name, digest = ref, ""
    if "@" in ref:
        name, _, digest = ref.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidArgument(f"invalid image reference {ref!r}: bad digest {digest!r}")
    tag = ""
    # A colon after the last slash separates the tag (a colon before it is a port).
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidArgument(f"invalid image reference {ref!r}: bad tag {tag!r}")
    if not name:
        raise InvalidArgument(f"invalid image reference {ref!r}: no repository name")
    if is_image_id(name) and not tag and not digest:
        raise InvalidArgument(
            f"invalid image reference {ref!r}: a 64-hex string is an image ID, not a name"
        )
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidArgument(f"invalid image reference {ref!r}: bad registry host {domain!r}")
    if not _PATH_RE.fullmatch(path):
        if path.lower() != path and _PATH_RE.fullmatch(path.lower()):
            raise InvalidArgument(f"invalid image reference {ref!r}: repository must be lowercase")
        raise InvalidArgument(f"invalid image reference {ref!r}: bad repository name {path!r}")
    if len(domain) + 1 + len(path) > MAX_NAME:
        raise InvalidArgument(f"invalid image reference {ref!r}: name longer than {MAX_NAME}")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
