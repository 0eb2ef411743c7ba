"""A client for the OCI distribution API: manifests and blobs over HTTP(S).

    client = RegistryClient(config.registry)
    repo = client.repository(reference, credentials)
    desc, body = await repo.resolve()                 # manifest or index by tag/digest
    body = await repo.fetch_manifest(child_desc)      # by digest, verified
    await repo.fetch_blob(layer_desc, ingest_writer)  # streamed, resumable
    await client.close()

Endpoints: a host's configured mirrors in order, then the host itself, all with
the same repository path. A mirror that fails or lacks the object is skipped;
the host's own answer is the one reported. Scheme: plain HTTP when the host is
`insecure` or on loopback (unless TLS files are configured for it), else HTTPS
with the host's CA bundle / client certificate / skip_verify.

Errors map to the daemon's hierarchy: unknown repository or tag → NotFound with
the registry's message; 401 → Unauthenticated; 403 → PermissionDenied; no
route, refused, TLS failure → Unavailable; no progress for `registry.timeout`
seconds → DeadlineExceeded; wrong digest or size → DataLoss; a manifest that
is not JSON or of an unsupported type → InvalidArgument / FailedPrecondition.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from pyctr.daemon import config as cfg
from pyctr.daemon.errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PyctrError,
    Unauthenticated,
    Unavailable,
)
from pyctr.daemon.images.auth import Credentials, HostAuth
from pyctr.daemon.images.content import IngestWriter
from pyctr.daemon.images.reference import Reference, validate_digest

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST = 4 << 20
MAX_ERROR_BODY = 64 << 10
# Manifests, configs: at most this many stall timeouts for the whole body.
DOCUMENT_TIME_FACTOR = 4
# A blob download that keeps being cut is resumed this many times in a row
# without progress before the pull gives up.
MAX_STALLED_RESUMES = 3


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Any, what: str) -> Descriptor:
        if not isinstance(d, dict):
            raise InvalidArgument(f"{what}: descriptor is not an object")
        media_type, digest, size = d.get("mediaType", ""), d.get("digest"), d.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise InvalidArgument(f"{what}: descriptor lacks mediaType or digest")
        try:
            validate_digest(digest)
        except InvalidArgument:
            raise InvalidArgument(f"{what}: invalid digest {digest!r}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{what}: descriptor {digest} has an invalid size {size!r}")
        platform = d.get("platform")
        annotations = d.get("annotations") or {}
        urls = d.get("urls") or []
        if not isinstance(annotations, dict) or not isinstance(urls, list):
            raise InvalidArgument(f"{what}: descriptor {digest} is malformed")
        return cls(
            media_type,
            digest,
            size,
            platform if isinstance(platform, dict) else None,
            {str(k): str(v) for k, v in annotations.items()},
            tuple(str(u) for u in urls),
        )


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def manifest_media_type(body: bytes, content_type: str, what: str) -> str:
    """The media type of a manifest: its own mediaType field, else the header."""
    doc = parse_json(body, what)
    declared = doc.get("mediaType")
    content_type = content_type.split(";")[0].strip()
    if isinstance(declared, str) and declared:
        mt = declared
    elif content_type in MANIFEST_TYPES + INDEX_TYPES:
        mt = content_type
    elif "manifests" in doc:
        mt = OCI_INDEX
    elif "layers" in doc and "config" in doc:
        mt = OCI_MANIFEST
    else:
        mt = content_type
    if mt in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise FailedPrecondition(f"{what}: Docker schema 1 manifests are not supported")
    if mt not in MANIFEST_TYPES + INDEX_TYPES:
        raise FailedPrecondition(f"{what}: unsupported manifest media type {mt!r}")
    return mt


# -- platforms -------------------------------------------------------------------

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, spec: str) -> Platform:
        parts = spec.strip().lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise InvalidArgument(f"invalid platform {spec!r}: want os/arch[/variant]")
        return cls(*parts)

    @classmethod
    def host(cls) -> Platform:
        import platform as _platform

        machine = _platform.machine()
        arch = _ARCH.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
        return cls("linux", arch, variant)

    def matches(self, p: dict[str, Any] | None) -> bool:
        if not p:
            return False
        if p.get("os") != self.os or p.get("architecture") != self.architecture:
            return False
        want, got = self.variant, p.get("variant", "") or ""
        if self.architecture == "arm64":
            # arm64 without a variant means v8.
            want, got = want or "v8", got or "v8"
        return not want or want == got


def choose_platform(index: dict[str, Any], platform: Platform, what: str) -> Descriptor:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidArgument(f"{what}: index has no manifests list")
    descs = [Descriptor.from_json(m, what) for m in manifests]
    candidates = [d for d in descs if platform.matches(d.platform)]
    if not candidates:
        have = sorted(
            {
                str(
                    Platform(
                        d.platform.get("os", "?"),
                        d.platform.get("architecture", "?"),
                        d.platform.get("variant", "") or "",
                    )
                )
                for d in descs
                if d.platform
            }
        )
        raise NotFound(
            f"{what}: no image for platform {platform} (the index has: {', '.join(have) or 'none'})"
        )
    # Prefer an exact variant match when the request named none.
    exact = [d for d in candidates if (d.platform or {}).get("variant", "") == platform.variant]
    return (exact or candidates)[0]


# -- endpoints -------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class Endpoint:
    host: str  # host[:port], the config key
    base: str  # scheme://host[:port][/prefix]
    ssl: ssl.SSLContext | bool
    creds: Credentials | None
    mirror: bool


class RegistryClient:
    def __init__(self, config: cfg.Registry) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._ssl: dict[str, ssl.SSLContext | bool] = {}
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.timeout, sock_read=config.timeout
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, limit_per_host=16),
                timeout=self.timeout,
                auto_decompress=False,  # blobs are hashed as sent
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def host_config(self, host: str) -> cfg.RegistryHost:
        hosts = self.config.hosts
        if host in hosts:
            return hosts[host]
        if host == "docker.io" and "registry-1.docker.io" in hosts:
            return hosts["registry-1.docker.io"]
        return cfg.RegistryHost()

    def _ssl_for(self, host: str, hc: cfg.RegistryHost) -> ssl.SSLContext | bool:
        if host in self._ssl:
            return self._ssl[host]
        if not (hc.ca_file or hc.cert_file or hc.skip_verify):
            ctx: ssl.SSLContext | bool = True
        else:
            c = ssl.create_default_context()
            try:
                if hc.ca_file:
                    c.load_verify_locations(cafile=hc.ca_file)
                if hc.cert_file:
                    c.load_cert_chain(hc.cert_file, hc.key_file or None)
            except (OSError, ssl.SSLError) as e:
                raise FailedPrecondition(f"TLS files for registry {host}: {e}") from None
            if hc.skip_verify:
                c.check_hostname = False
                c.verify_mode = ssl.CERT_NONE
            ctx = c
        self._ssl[host] = ctx
        return ctx

    def _endpoint(self, spec: str, mirror: bool, creds: Credentials | None) -> Endpoint:
        parts = urlsplit(spec if "://" in spec else f"//{spec}")
        host = parts.netloc
        if not host or (parts.scheme and parts.scheme not in ("http", "https")):
            raise InvalidArgument(f"invalid registry endpoint {spec!r}")
        hc = self.host_config(host)
        tls_files = bool(hc.ca_file or hc.cert_file or hc.skip_verify)
        scheme = parts.scheme or (
            "http" if hc.insecure or (_is_loopback(host) and not tls_files) else "https"
        )
        base_host = "registry-1.docker.io" if host == "docker.io" and not mirror else host
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v2"):
            prefix = prefix[:-3]
        config_creds = (
            Credentials.from_fields(hc.username, hc.password, hc.auth)
            if hc.username or hc.password or hc.auth
            else None
        )
        ssl_ctx = self._ssl_for(host, hc) if scheme == "https" else False
        return Endpoint(
            host, f"{scheme}://{base_host}{prefix}", ssl_ctx, creds or config_creds, mirror
        )

    def endpoints(self, ref: Reference, creds: Credentials | None) -> list[Endpoint]:
        hc = self.host_config(ref.domain)
        out = [self._endpoint(m, True, None) for m in hc.mirrors]
        out.append(self._endpoint(ref.domain, False, creds))
        return out

    def repository(self, ref: Reference, creds: Credentials | None = None) -> Repository:
        return Repository(self, ref, self.endpoints(ref, creds))


class Repository:
    """One repository across its endpoints, for the duration of one pull."""

    def __init__(self, client: RegistryClient, ref: Reference, endpoints: list[Endpoint]) -> None:
        self.client = client
        self.ref = ref
        self.endpoints = endpoints
        self.scope = f"repository:{ref.path}:pull"
        self._auth = {
            id(e): HostAuth(client.session, e.host, e.creds, client.timeout) for e in endpoints
        }

    # -- plumbing ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _request(
        self, ep: Endpoint, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `<base>/v2/<repo>/<path>`, answering auth challenges once each."""
        url = f"{ep.base}/v2/{self.ref.path}/{path}"
        auth = self._auth[id(ep)]
        for _ in range(4):
            h = dict(headers or {})
            if (a := auth.header()) is not None:
                h["Authorization"] = a
            try:
                resp = await self.client.session.get(url, headers=h, ssl=ep.ssl)
            except aiohttp.ClientConnectorCertificateError as e:
                raise Unavailable(f"registry {ep.host}: TLS verification failed: {e}") from None
            except aiohttp.ClientSSLError as e:
                raise Unavailable(f"registry {ep.host}: TLS error: {e}") from None
            except TimeoutError:  # before ClientConnectionError: aiohttp's is both
                raise DeadlineExceeded(
                    f"registry {ep.host} did not answer within {self.client.config.timeout}s"
                ) from None
            except (aiohttp.ClientConnectionError, OSError) as e:
                raise Unavailable(f"registry {ep.host} is unreachable: {e}") from None
            try:
                if resp.status == 401:
                    msg = await _error_message(resp)
                    await auth.on_unauthorized(
                        resp.headers.getall("WWW-Authenticate", []), self.scope, msg
                    )
                    continue
                auth.accepted()
                yield resp
                return
            finally:
                resp.release()
        raise Unauthenticated(f"registry {ep.host}: authentication did not converge")

    async def _check(self, ep: Endpoint, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status < 300:
            return
        msg = await _error_message(resp)
        if resp.status == 404:
            raise NotFound(f"{what} not found on {ep.host}: {msg}")
        if resp.status == 403:
            raise PermissionDenied(f"registry {ep.host} denied access to {what}: {msg}")
        if resp.status == 429 or resp.status >= 500:
            raise Unavailable(f"registry {ep.host} answered {resp.status} for {what}: {msg}")
        if resp.status == 400 and "NAME_INVALID" in msg.upper():
            raise InvalidArgument(f"registry {ep.host}: invalid name for {what}: {msg}")
        raise FailedPrecondition(f"registry {ep.host} answered {resp.status} for {what}: {msg}")

    async def _each_endpoint(self, what: str, attempt: Any) -> Any:
        """Run `attempt(ep)` on the mirrors, then the host; report the host's error."""
        last: PyctrError | None = None
        for ep in self.endpoints:
            try:
                return await attempt(ep)
            except PyctrError as e:
                if not ep.mirror:
                    raise
                log.info("mirror %s failed for %s: %s", ep.base, what, e)
                last = e
        assert last is not None
        raise last

    async def _read_limited(
        self, ep: Endpoint, resp: aiohttp.ClientResponse, limit: int, what: str
    ) -> bytes:
        if resp.content_length is not None and resp.content_length > limit:
            raise FailedPrecondition(
                f"{what} from {ep.host} is too large ({resp.content_length} bytes)"
            )
        # A bounded document gets a bounded time too: a registry that drips a
        # byte now and then never trips the stall timeout, and the kubelet
        # pulls without a deadline of its own.
        deadline = self.client.config.timeout * DOCUMENT_TIME_FACTOR
        with _body_errors(
            f"registry {ep.host} stalled sending {what} (or took over {deadline:g}s)",
            f"registry {ep.host} broke off sending {what}",
        ):
            async with asyncio.timeout(deadline):
                body = await resp.content.read(limit + 1)
                while len(body) <= limit and (
                    more := await resp.content.read(limit + 1 - len(body))
                ):
                    body += more
        if len(body) > limit:
            raise FailedPrecondition(f"{what} from {ep.host} is larger than {limit} bytes")
        return body

    # -- manifests ---------------------------------------------------------------

    async def resolve(self) -> tuple[Descriptor, bytes]:
        """Fetch the manifest or index the reference names; verify its digest."""
        obj = self.ref.object
        what = f"manifest {self.ref}"

        async def attempt(ep: Endpoint) -> tuple[Descriptor, bytes]:
            async with self._request(ep, f"manifests/{obj}", {"Accept": ACCEPT}) as resp:
                await self._check(ep, resp, what)
                body = await self._read_limited(ep, resp, MAX_MANIFEST, what)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                header = resp.headers.get("Docker-Content-Digest", "")
                if self.ref.digest and digest != self.ref.digest:
                    raise DataLoss(f"{what} from {ep.host} hashes to {digest}")
                if header.startswith("sha256:") and header != digest:
                    raise DataLoss(
                        f"{what} from {ep.host}: registry says {header}, content hashes to {digest}"
                    )
                mt = manifest_media_type(body, resp.headers.get("Content-Type", ""), what)
                return Descriptor(mt, digest, len(body)), body

        return await self._each_endpoint(what, attempt)

    async def fetch_manifest(self, desc: Descriptor) -> bytes:
        """Fetch a child manifest by digest; checks size and digest."""
        return await self._fetch_small(desc, "manifest", MAX_MANIFEST, {"Accept": ACCEPT})

    # -- blobs -------------------------------------------------------------------

    async def fetch_blob_bytes(self, desc: Descriptor, limit: int) -> bytes:
        """A small blob (the image config) into memory, verified."""
        return await self._fetch_small(desc, "blob", limit)

    async def _fetch_small(
        self, desc: Descriptor, kind: str, limit: int, headers: dict[str, str] | None = None
    ) -> bytes:
        """A manifest or blob of at most `limit` bytes into memory, verified."""
        what = f"{kind} {desc.digest} of {self.ref}"
        if desc.size > limit:
            raise FailedPrecondition(f"{what} is too large ({desc.size} bytes)")

        async def attempt(ep: Endpoint) -> bytes:
            async with self._request(ep, f"{kind}s/{desc.digest}", headers) as resp:
                await self._check(ep, resp, what)
                body = await self._read_limited(ep, resp, desc.size, what)
            _verify(body, desc, what, ep)
            return body

        return await self._each_endpoint(what, attempt)

    async def fetch_blob(self, desc: Descriptor, writer: IngestWriter) -> None:
        """Stream a blob into `writer` from its offset on; resume when cut off.

        The caller commits (verifies) the writer. A mirror that fails midway is
        left for the next endpoint, which continues from the same offset.
        """
        what = f"blob {desc.digest} of {self.ref}"

        async def attempt(ep: Endpoint) -> None:
            stalled = 0
            while writer.offset < desc.size:
                before = writer.offset
                try:
                    await self._stream_once(ep, desc, writer, what)
                except (Unavailable, DeadlineExceeded):
                    if writer.offset == before:
                        stalled += 1
                        if stalled >= MAX_STALLED_RESUMES:
                            raise
                    else:
                        stalled = 0
                    log.info("%s cut at %d bytes; resuming", what, writer.offset)
                    await asyncio.sleep(0.05 * stalled)
                    continue
                if writer.offset < desc.size and writer.offset == before:
                    # A body that ended cleanly without a byte more: give up.
                    # (Short with progress loops round and resumes.)
                    raise DataLoss(
                        f"{what} from {ep.host}: got {writer.offset} bytes, "
                        f"descriptor says {desc.size}"
                    )

        await self._each_endpoint(what, attempt)

    async def _stream_once(
        self, ep: Endpoint, desc: Descriptor, writer: IngestWriter, what: str
    ) -> None:
        headers = {}
        if writer.offset:
            headers["Range"] = f"bytes={writer.offset}-"
        async with self._request(ep, f"blobs/{desc.digest}", headers) as resp:
            if writer.offset and resp.status == 200:
                writer.reset()  # Range ignored: the body starts at byte 0.
            elif writer.offset and resp.status == 206:
                start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start != str(writer.offset):
                    raise Unavailable(f"{what}: {ep.host} sent an unexpected Content-Range")
            else:
                await self._check(ep, resp, what)
            if resp.content_length is not None and writer.offset + resp.content_length > desc.size:
                raise DataLoss(
                    f"{what} from {ep.host} is larger than its descriptor says ({desc.size} bytes)"
                )
            with _body_errors(
                f"{what}: no data from {ep.host} for {self.client.config.timeout}s",
                f"{what}: {ep.host} broke off the download",
            ):
                async for chunk in resp.content.iter_chunked(256 << 10):
                    writer.write(chunk)


@contextlib.contextmanager
def _body_errors(stalled: str, broke_off: str) -> Iterator[None]:
    """A response body that stops coming: DEADLINE_EXCEEDED if it stalled,
    UNAVAILABLE if the connection broke (with aiohttp's reason)."""
    try:
        yield
    except TimeoutError:
        raise DeadlineExceeded(stalled) from None
    except aiohttp.ClientError as e:
        raise Unavailable(f"{broke_off}: {e}") from None


def _verify(body: bytes, desc: Descriptor, what: str, ep: Endpoint) -> None:
    if len(body) != desc.size:
        raise DataLoss(f"{what} from {ep.host}: got {len(body)} bytes, descriptor says {desc.size}")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if digest != desc.digest:
        raise DataLoss(f"{what} from {ep.host} hashes to {digest}")


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    """The registry's own words: the `errors[].message` of its JSON body."""
    try:
        body = await resp.content.read(MAX_ERROR_BODY)
    except (aiohttp.ClientError, TimeoutError):
        return f"HTTP {resp.status}"
    try:
        doc = json.loads(body)
        msgs = []
        for e in doc.get("errors", []):
            m = e.get("message") or e.get("code") or ""
            if e.get("detail") and isinstance(e["detail"], str | dict | list):
                m = f"{m} ({json.dumps(e['detail'])[:200]})"
            msgs.append(str(m))
        if msgs:
            return "; ".join(msgs)
    except (ValueError, AttributeError, TypeError):
        pass
    text = body[:200].decode(errors="replace").strip()
    return text or f"HTTP {resp.status}"
