"""Registry authentication: credentials, `WWW-Authenticate` challenges, tokens.

A registry answers an unauthorised request with 401 and a challenge:

    WWW-Authenticate: Bearer realm="https://auth.example/token",service="reg",scope="repository:x:pull"
    WWW-Authenticate: Basic realm="reg"

For Basic we send the user and password on every request. For Bearer we ask
the realm for a token for the service and scope (with the user and password as
Basic auth, or an OAuth2 refresh token when we hold an identity token, or
anonymously), then send `Authorization: Bearer <token>`. A registry token given
by the client is used as the bearer token directly.

One `HostAuth` lives for one pull and one registry host, so tokens are never
shared between pulls made with different credentials.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from pyctr.daemon.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    PyctrError,
    Unauthenticated,
    Unavailable,
)

MAX_TOKEN_RESPONSE = 1 << 20


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token or self.registry_token)

    @classmethod
    def from_fields(
        cls,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
    ) -> Credentials:
        """Build from CRI AuthConfig / config-file fields; `auth` is base64(user:pass)."""
        if auth and not (username or password):
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidArgument("auth is not base64 of user:password") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth is not base64 of user:password")
        return cls(username, password, identity_token, registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str]


_PARAM_RE = re.compile(r'\s*([a-zA-Z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse one WWW-Authenticate value (one or more challenges)."""
    out: list[Challenge] = []
    pos = 0
    header = header.strip()
    while pos < len(header):
        m = re.match(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)\s*", header[pos:])
        if not m:
            break
        scheme = m.group(1).lower()
        pos += m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            pm = _PARAM_RE.match(header, pos)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            pos = pm.end()
        out.append(Challenge(scheme, params))
    return out


class HostAuth:
    """Authorization state for one registry host within one pull."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        host: str,
        creds: Credentials | None,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.session = session
        self.host = host
        self.creds = creds or Credentials()
        self.timeout = timeout
        self._header: str | None = None
        self._tried: set[tuple[str, str]] = set()
        self._worked = False  # the current header got a request through

    def header(self) -> str | None:
        return self._header

    def accepted(self) -> None:
        """The registry answered a request made with the current header."""
        self._worked = True

    async def on_unauthorized(self, www_authenticate: list[str], scope: str, msg: str) -> None:
        """React to a 401; return to retry, raise when retrying cannot help."""
        challenges = [c for h in www_authenticate for c in parse_challenges(h)]
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            key = ("bearer", bearer.params.get("scope", scope))
            # A second 401 for the same scope means the token was refused,
            # unless that token had worked before: then it expired (tokens
            # live minutes, pulls of big images longer), so fetch another.
            if key in self._tried and not self._worked:
                raise self._denied(msg)
            self._tried.add(key)
            self._worked = False
            self._header = "Bearer " + await self._token(bearer.params, scope)
            return
        if basic is not None and self.creds.username:
            if ("basic", "") in self._tried:
                raise self._denied(msg)
            self._tried.add(("basic", ""))
            self._header = self.creds.basic()
            return
        raise self._denied(msg)

    def _denied(self, msg: str) -> PyctrError:
        if self.creds:
            return Unauthenticated(f"registry {self.host} refused the credentials: {msg}")
        return Unauthenticated(f"registry {self.host} requires authentication: {msg}")

    async def _token(self, params: dict[str, str], scope: str) -> str:
        if self.creds.registry_token:
            return self.creds.registry_token
        realm = params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise Unavailable(f"registry {self.host} sent an unusable auth realm {realm!r}")
        scopes = [s for s in {params.get("scope", ""), scope} if s]
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scopes]
        headers: dict[str, str] = {}
        try:
            if self.creds.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": self.creds.identity_token,
                    "client_id": "pyctr",
                    "service": params.get("service", ""),
                    "scope": " ".join(scopes),
                }
                req = self.session.post(realm, data=form, timeout=self.timeout)
            else:
                if self.creds.username:
                    query.append(("account", self.creds.username))
                    headers["Authorization"] = self.creds.basic()
                req = self.session.get(realm, params=query, headers=headers, timeout=self.timeout)
            async with req as resp:
                body = await resp.content.read(MAX_TOKEN_RESPONSE + 1)
                status = resp.status
        except TimeoutError:  # aiohttp's timeouts are ClientErrors too: first
            raise DeadlineExceeded(
                f"auth server {realm} for {self.host} did not answer in time"
            ) from None
        except aiohttp.ClientError as e:
            raise Unavailable(
                f"auth server {realm} for {self.host}: {e or type(e).__name__}"
            ) from None
        text = body[:300].decode(errors="replace").strip()
        if status == 401:
            raise Unauthenticated(f"auth server for {self.host} refused the credentials: {text}")
        if status == 403:
            raise PermissionDenied(f"auth server for {self.host} denied access: {text}")
        if status != 200 or len(body) > MAX_TOKEN_RESPONSE:
            raise Unavailable(f"auth server for {self.host} answered {status}: {text}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"auth server for {self.host} sent no token")
        return token
