"""The wire: a client built only from the .proto files, and every RPC answered sanely."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from grpc_tools import protoc

from pyctr.proto import cri_pb2, cri_pb2_grpc
from tests.support.daemon import PyctrDaemon

REPO = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_sources() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_client_from_proto_sources_only(pyctrd: PyctrDaemon, tmp_path: Path) -> None:
    """Compile cri.proto on its own (no pyctr code) and call Version, as crictl would."""
    out = tmp_path / "gen"
    out.mkdir()
    rc = protoc.main(
        [
            "protoc",
            f"-I{REPO / 'proto'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "cri.proto",
        ]
    )
    assert rc == 0
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(out)!r})
        import grpc, cri_pb2, cri_pb2_grpc
        assert cri_pb2.DESCRIPTOR.package == "runtime.v1"
        ch = grpc.insecure_channel("unix:{pyctrd.address}")
        stub = cri_pb2_grpc.RuntimeServiceStub(ch)
        v = stub.Version(cri_pb2.VersionRequest(version="v1"), timeout=10)
        print(v.runtime_name, v.runtime_api_version, v.runtime_version)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    name, api, version = proc.stdout.split()
    assert (name, api) == ("pyctr", "v1")
    assert version[0].isdigit()


def test_full_method_names_on_the_wire(pyctrd: PyctrDaemon) -> None:
    """Call by raw method path, the way the kubelet's generated Go client does."""
    with pyctrd.channel() as ch:
        call = ch.unary_unary(
            "/runtime.v1.RuntimeService/Version",
            request_serializer=cri_pb2.VersionRequest.SerializeToString,
            response_deserializer=cri_pb2.VersionResponse.FromString,
        )
        assert call(cri_pb2.VersionRequest(), timeout=10).runtime_api_version == "v1"


def test_status_conditions_are_honest(pyctrd: PyctrDaemon) -> None:
    with pyctrd.channel() as ch:
        st = cri_pb2_grpc.RuntimeServiceStub(ch).Status(
            cri_pb2.StatusRequest(verbose=True), timeout=10
        )
    conds = {c.type: c for c in st.status.conditions}
    assert set(conds) == {"RuntimeReady", "NetworkReady"}
    assert conds["RuntimeReady"].status is True
    # No pod networking yet (and no CNI config in the test's conf dir): not ready, with a reason.
    assert conds["NetworkReady"].status is False
    assert conds["NetworkReady"].reason and conds["NetworkReady"].message


def test_runtime_not_ready_without_runc(daemon_factory) -> None:
    d = daemon_factory('[runtime]\nrunc = "/nonexistent/runc"\n')
    with d.channel() as ch:
        st = cri_pb2_grpc.RuntimeServiceStub(ch).Status(cri_pb2.StatusRequest(), timeout=10)
    ready = next(c for c in st.status.conditions if c.type == "RuntimeReady")
    assert ready.status is False and "runc" in ready.message


def _all_methods() -> list[tuple[str, object]]:
    out = []
    for service in cri_pb2.DESCRIPTOR.services_by_name.values():
        for m in service.methods:
            out.append((f"/{service.full_name}/{m.name}", m))
    return out


@pytest.mark.parametrize("path_and_method", _all_methods(), ids=lambda pm: pm[0].rsplit("/", 1)[1])
def test_every_cri_rpc_answers_with_a_status_not_a_crash(
    module_pyctrd: PyctrDaemon, path_and_method
) -> None:
    pyctrd = module_pyctrd
    path, method = path_and_method
    from google.protobuf import message_factory

    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    with pyctrd.channel() as ch:
        kw = {
            "request_serializer": req_cls.SerializeToString,
            "response_deserializer": resp_cls.FromString,
        }
        try:
            if method.server_streaming:
                for _ in ch.unary_stream(path, **kw)(req_cls(), timeout=2):
                    pass
            else:
                ch.unary_unary(path, **kw)(req_cls(), timeout=10)
        except grpc.RpcError as e:
            code = e.code()
            # Empty requests may be refused; never with an internal error or a traceback.
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), e.details()
            assert "Traceback" not in (e.details() or "")
            if code == grpc.StatusCode.UNIMPLEMENTED:
                assert path.lstrip("/") in e.details()
        # The daemon is still serving.
        cri_pb2_grpc.RuntimeServiceStub(ch).Version(cri_pb2.VersionRequest(), timeout=10)
    assert pyctrd.proc is not None and pyctrd.proc.poll() is None


def test_garbage_bytes_do_not_hurt(pyctrd: PyctrDaemon) -> None:
    with pyctrd.channel() as ch:
        call = ch.unary_unary("/runtime.v1.RuntimeService/ContainerStatus")
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
        assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        cri_pb2_grpc.RuntimeServiceStub(ch).Version(cri_pb2.VersionRequest(), timeout=10)
