"""Registry authentication (Basic, Bearer tokens), config-file credentials, mirrors."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.images.conftest import ImageSet, cri_pull, images_stub
from tests.images.faultproxy import FaultProxy
from tests.support.daemon import PyctrDaemon
from tests.support.images import push
from tests.support.registry import Registry, TokenIssuer

USERS = {"alice": "s3cret"}


@pytest.fixture(scope="module")
def basic_registry(
    tmp_path_factory: pytest.TempPathFactory, test_images: ImageSet
) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("basic"), htpasswd=USERS) as reg:
        push(test_images.layout, "small", f"{reg.host}/test/small:1", creds="alice:s3cret")
        yield reg


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, test_images: ImageSet
) -> Iterator[tuple[Registry, TokenIssuer]]:
    base = tmp_path_factory.mktemp("token")
    with TokenIssuer(base, USERS) as issuer, Registry(base, token=issuer) as reg:
        push(test_images.layout, "small", f"{reg.host}/test/small:1", creds="alice:s3cret")
        yield reg, issuer


def pull_code(d: PyctrDaemon, ref: str, **auth: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        cri_pull(d, ref, timeout=30, **auth)
    return e.value.code()


def test_basic_auth(pyctrd: PyctrDaemon, basic_registry: Registry, test_images: ImageSet) -> None:
    ref = f"{basic_registry.host}/test/small:1"
    assert pull_code(pyctrd, ref) == grpc.StatusCode.UNAUTHENTICATED
    assert pull_code(pyctrd, ref, username="alice", password="wrong") == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert cri_pull(pyctrd, ref, username="alice", password="s3cret") == test_images.small.id
    images_stub(pyctrd).RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))
    encoded = base64.b64encode(b"alice:s3cret").decode()
    assert cri_pull(pyctrd, ref, auth=encoded) == test_images.small.id


def test_credentials_for_another_registry_are_not_sent(
    pyctrd: PyctrDaemon, basic_registry: Registry
) -> None:
    ref = f"{basic_registry.host}/test/small:1"
    code = pull_code(
        pyctrd, ref, username="alice", password="s3cret", server_address="other.example:5000"
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_bearer_token_auth(
    pyctrd: PyctrDaemon, token_registry: tuple[Registry, TokenIssuer], test_images: ImageSet
) -> None:
    reg, issuer = token_registry
    ref = f"{reg.host}/test/small:1"
    assert pull_code(pyctrd, ref) == grpc.StatusCode.UNAUTHENTICATED
    assert pull_code(pyctrd, ref, username="alice", password="nope") == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    issuer.requests.clear()
    assert cri_pull(pyctrd, ref, username="alice", password="s3cret") == test_images.small.id
    scopes = {s for r in issuer.requests for s in r["query"].get("scope", [])}
    assert scopes == {"repository:test/small:pull"}
    assert all(r["auth"] for r in issuer.requests)
    assert {r["query"]["service"][0] for r in issuer.requests} == {issuer.service}


def test_config_file_credentials(
    daemon_factory: Callable[..., PyctrDaemon], basic_registry: Registry, test_images: ImageSet
) -> None:
    d = daemon_factory(
        f'[registry.hosts."{basic_registry.host}"]\nusername = "alice"\npassword = "s3cret"\n'
    )
    assert cri_pull(d, f"{basic_registry.host}/test/small:1") == test_images.small.id


def test_mirrors_in_order_then_host(
    daemon_factory: Callable[..., PyctrDaemon], test_images: ImageSet, tmp_path: Path
) -> None:
    dead = "http://127.0.0.1:1"
    with (
        Registry(tmp_path) as mirror_reg,
        FaultProxy(mirror_reg.port) as mirror,
        FaultProxy(test_images.registry.port) as upstream,
    ):
        push(test_images.layout, "small", f"{mirror_reg.host}/test/small:1")
        d = daemon_factory(
            f'[registry.hosts."{upstream.host}"]\nmirrors = ["{dead}", "http://{mirror.host}"]\n'
        )
        small = test_images.small
        # The mirror has it: the host is never asked.
        assert cri_pull(d, f"{upstream.host}/test/small:1") == small.id
        assert mirror.blob_gets(small.layers[0].digest) == 1
        assert sum(upstream.requests.values()) == 0
        # The mirror lacks it: the host answers.
        busybox = test_images.busybox
        assert cri_pull(d, f"{upstream.host}/test/busybox:1") == busybox.id
        assert mirror.requests["GET /v2/test/busybox/manifests/1"] == 1
        assert upstream.blob_gets(busybox.layers[0].digest) == 1


def test_identity_token_and_registry_token(
    pyctrd: PyctrDaemon, token_registry: tuple[Registry, TokenIssuer], test_images: ImageSet
) -> None:
    reg, issuer = token_registry
    ref = f"{reg.host}/test/small:1"
    # An identity (refresh) token is traded for an access token (OAuth2 POST).
    issuer.requests.clear()
    assert cri_pull(pyctrd, ref, identity_token="refresh-alice") == test_images.small.id
    assert [r["method"] for r in issuer.requests] == ["POST"]
    assert pull_code(pyctrd, ref, identity_token="refresh-mallory") == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    images_stub(pyctrd).RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))

    # A registry token is sent as it is: the auth server is not asked.
    query = urlencode({"service": issuer.service, "scope": "repository:test/small:pull"})
    req = urllib.request.Request(
        f"{issuer.url}/token?{query}",
        headers={"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.load(resp)["token"]
    issuer.requests.clear()
    assert cri_pull(pyctrd, ref, registry_token=token) == test_images.small.id
    assert issuer.requests == []
