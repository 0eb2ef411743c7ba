"""A real registry for tests: Debian's docker-registry on 127.0.0.1.

    with Registry(tmp_path) as reg:                  # open, plain HTTP
        push(layout, "app:1", f"{reg.host}/app:1")   # tests.support.images
        ...
    Registry(tmp_path, htpasswd={"alice": "pw"})     # Basic auth
    with TokenIssuer(tmp_path, {"alice": "pw"}) as issuer:
        Registry(tmp_path, token=issuer)             # Bearer tokens from `issuer`
    Registry(tmp_path, tls=True)                     # HTTPS; trust reg.ca_path
    Registry(tmp_path, tls=True, client_ca=ca.pem)   # ... and require a client cert

Each registry gets a free port and its own storage dir, is started and stopped
by PID, and is ready (answers /v2/) when the constructor's `start()` returns.
`TokenIssuer` is a small token server (a thread in the test process) that
signs JWTs with a throwaway RSA key whose self-signed certificate the registry
trusts: the same flow as Docker Hub's auth server.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bcrypt(password: str) -> str:
    import bcrypt  # test dependency

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def make_cert(cert_path: Path, key_path: Path, name: str) -> None:
    """A self-signed certificate (its own CA) for `name` (an IP or a DNS name)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt = x509.DNSName(name)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


class Registry:
    def __init__(
        self,
        base: Path,
        htpasswd: dict[str, str] | None = None,
        token: TokenIssuer | None = None,
        tls: bool = False,
        client_ca: Path | None = None,
        start: bool = True,
    ) -> None:
        self.dir = base / f"registry-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.htpasswd = htpasswd
        self.token = token
        self.tls = tls
        self.client_ca = client_ca
        # With tls: the server's self-signed certificate, which is its own CA.
        self.ca_path = self.dir / "server.pem"
        if tls:
            make_cert(self.ca_path, self.dir / "server.key", "127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "registry.log"
        if start:
            self.start()

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.dir / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
            "  secret: pyctr-test-secret",
        ]
        if self.tls:
            lines += [
                "  tls:",
                f"    certificate: {self.ca_path}",
                f"    key: {self.dir / 'server.key'}",
            ]
            if self.client_ca:
                lines += ["    clientcas:", f"      - {self.client_ca}"]
        if self.htpasswd:
            path = self.dir / "htpasswd"
            path.write_text("".join(f"{u}:{_bcrypt(p)}\n" for u, p in self.htpasswd.items()))
            lines += ["auth:", "  htpasswd:", "    realm: pyctr-test", f"    path: {path}"]
        elif self.token:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token.url}/token",
                f"    service: {self.token.service}",
                f"    issuer: {self.token.issuer}",
                f"    rootcertbundle: {self.token.cert_path}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> Registry:
        config = self.dir / "config.yml"
        config.write_text(self._config())
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited:\n{self.log()}")
            try:
                urllib.request.urlopen(
                    f"{self.url}/v2/", timeout=1, context=ssl._create_unverified_context()
                ).close()
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, and asking for auth
            except ssl.SSLError:
                return self  # up, and asking for a client certificate
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not come up:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TokenIssuer:
    """A bearer-token server for a registry in `auth: token` mode."""

    service = "pyctr-test-registry"
    issuer = "pyctr-test-issuer"

    def __init__(self, base: Path, users: dict[str, str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.requests: list[dict[str, Any]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyctr test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = base / f"token-{uuid.uuid4().hex[:8]}.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                issuer._handle(self)

            def do_POST(self) -> None:  # noqa: N802 (OAuth2 refresh-token grant)
                issuer._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(sig)}"

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(req.path).query)
        account = ""
        auth = req.headers.get("Authorization", "")
        if req.command == "POST":
            length = int(req.headers.get("Content-Length") or 0)
            form = parse_qs(req.rfile.read(length).decode())
            query = {
                **query,
                **{k: v[0].split(" ") if k == "scope" else v for k, v in form.items()},
            }
            # Refresh tokens are "refresh-<user>" for the users we know.
            user = form.get("refresh_token", [""])[0].removeprefix("refresh-")
            auth = "refresh" if user in self.users else "bad-refresh"
            account = user if user in self.users else ""
        self.requests.append({"query": query, "auth": bool(auth), "method": req.command})
        if auth == "bad-refresh":
            auth = "Basic " + base64.b64encode(b"-:-").decode()  # refused below
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) != pw:
                body = json.dumps({"details": "invalid username or password"}).encode()
                req.send_response(401)
                req.send_header("Content-Type", "application/json")
                req.send_header("Content-Length", str(len(body)))
                req.end_headers()
                req.wfile.write(body)
                return
            account = user
        access = []
        for scope in query.get("scope", []):
            for one in scope.split(" "):
                kind, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository" and account:
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account,
            "aud": query.get("service", [""])[0],
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = self._sign(claims)
        key = "access_token" if req.command == "POST" else "token"
        body = json.dumps({key: token, "expires_in": 300}).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> TokenIssuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
