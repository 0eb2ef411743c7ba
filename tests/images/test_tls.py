"""Registries over HTTPS: a private CA, skip_verify, and client certificates.

One daemon, one config, a registry per case: daemon starts are the slow part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.images.conftest import ImageSet, cri_pull
from tests.support.daemon import PyctrDaemon
from tests.support.images import push
from tests.support.registry import Registry, make_cert


def host_config(host: str, **keys: str | Path | bool) -> str:
    lines = [f'[registry.hosts."{host}"]']
    for k, v in keys.items():
        lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(str(v))}")
    return "\n".join(lines) + "\n"


def test_tls_ca_file_skip_verify_untrusted_and_client_certs(
    daemon_factory: Callable[..., PyctrDaemon], test_images: ImageSet, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    make_cert(certs / "client.cert", certs / "client.key", "pyctr-test-client")
    make_cert(tmp_path / "other.pem", tmp_path / "other.key", "127.0.0.1")
    with contextlib.ExitStack() as stack:

        def registry(**kw: Path | bool) -> Registry:
            reg = stack.enter_context(Registry(tmp_path, tls=True, **kw))  # type: ignore[arg-type]
            push(test_images.layout, "small", f"{reg.host}/test/small:1", cert_dir=certs)
            return reg

        private_ca, skip, untrusted = registry(), registry(), registry()
        mtls, mtls_no_cert = (registry(client_ca=certs / "client.cert") for _ in range(2))
        client = {"cert_file": certs / "client.cert", "key_file": certs / "client.key"}
        d = daemon_factory(
            host_config(private_ca.host, ca_file=private_ca.ca_path)
            + host_config(skip.host, skip_verify=True)
            + host_config(untrusted.host, ca_file=tmp_path / "other.pem")
            + host_config(mtls.host, ca_file=mtls.ca_path, **client)
            + host_config(mtls_no_cert.host, ca_file=mtls_no_cert.ca_path)
        )
        for good in (private_ca, skip, mtls):
            assert cri_pull(d, f"{good.host}/test/small:1") == test_images.small.id
        for bad, says in ((untrusted, "TLS verification failed"), (mtls_no_cert, "")):
            with pytest.raises(grpc.RpcError) as e:
                cri_pull(d, f"{bad.host}/test/small:1")
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
            assert says in e.value.details()
