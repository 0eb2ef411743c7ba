"""Malformed, random and oversized requests on every CRI method.

Property: whatever a client sends, pyctrd answers with a status code that
says what was wrong with the request (never INTERNAL or UNKNOWN, never a
traceback, never a hang) and keeps serving. Requests are generated from the
CRI descriptors by hypothesis (tests/faults/protofuzz.py), seeded with
PYCTR_FAULT_SEED (default 1), so a failure replays.

The shared daemon's sandbox image points at a closed port, so a random pod
config that passes validation fails at its image and creates nothing; the
deep CreateContainer run below uses a real pod and image instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from pyctr.proto import cri_pb2
from tests.conftest import TOKEN, new_base, safe_rmtree
from tests.faults.conftest import FaultImages
from tests.faults.protofuzz import messages
from tests.support import cgroups
from tests.support.daemon import PyctrDaemon, dump_toml
from tests.support.leaks import LeakCheck

pytestmark = pytest.mark.root

FUZZ_SEED = int(os.environ.get("PYCTR_FAULT_SEED", "1"))
MAX_MESSAGE = 16 * 1024 * 1024
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

METHODS: list[MethodDescriptor] = [
    m for s in cri_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods
]


def _path(m: MethodDescriptor) -> str:
    return f"/{m.containing_service.full_name}/{m.name}"


class Fuzz:
    def __init__(self, d: PyctrDaemon) -> None:
        self.d = d
        self.channel = grpc.insecure_channel(
            f"unix:{d.address}",
            options=[("grpc.max_send_message_length", -1),
                     ("grpc.max_receive_message_length", -1)],
        )  # fmt: skip
        self.seen: dict[str, set[grpc.StatusCode]] = {}

    def call(
        self, m: MethodDescriptor, req: Message | bytes, timeout: float = 10
    ) -> grpc.StatusCode:
        """Send one request; the status code it got (OK included)."""
        return self.call_for(m, req, timeout)[0]

    def call_for(
        self, m: MethodDescriptor, req: Message | bytes, timeout: float = 10
    ) -> tuple[grpc.StatusCode, Any]:
        """Send one request; its status code and (if OK and unary) the response."""
        raw = isinstance(req, bytes)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        kw: dict[str, Any] = {
            "request_serializer": None if raw else type(req).SerializeToString,
            "response_deserializer": resp_cls.FromString,
        }
        try:
            if m.server_streaming:
                # Event and stats streams never end by themselves: read a little.
                stream = self.channel.unary_stream(_path(m), **kw)(req, timeout=1.0)
                for n, _ in enumerate(stream):
                    if n > 50:
                        stream.cancel()
                        break
                return grpc.StatusCode.OK, None
            return grpc.StatusCode.OK, self.channel.unary_unary(_path(m), **kw)(
                req, timeout=timeout
            )
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.CANCELLED or (
                code == grpc.StatusCode.DEADLINE_EXCEEDED and m.server_streaming
            ):
                return grpc.StatusCode.OK, None  # a live stream we stopped reading
            assert code not in BAD_CODES, f"{m.name}: {code.name}: {details}\n{req!r:.2000}"
            assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{m.name} hung on {req!r:.2000}"
            assert "Traceback" not in details, details
            return code, None

    def check(self, m: MethodDescriptor, req: Message | bytes) -> None:
        code = self.call(m, req)
        self.seen.setdefault(m.name, set()).add(code)
        assert self.d.proc is not None and self.d.proc.poll() is None, "pyctrd died"

    def still_serving(self) -> None:
        version = next(m for m in METHODS if m.name == "Version")
        assert self.call(version, cri_pb2.VersionRequest()) == grpc.StatusCode.OK


@pytest.fixture(scope="module")
def fuzz(leak_check: LeakCheck) -> Iterator[Fuzz]:
    base = new_base("fz")
    config = {
        "registry": {"timeout": 2.0},
        "cri": {"sandbox_image": "127.0.0.1:1/nowhere/pause:1",
                "cni": {"conf_dir": str(base / "net.d")}},
    }  # fmt: skip
    d = PyctrDaemon(base, dump_toml(config)).start()
    f = Fuzz(d)
    try:
        yield f
    finally:
        f.channel.close()
        d.stop()
        safe_rmtree(base)


FUZZ_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_random_messages_on_every_method(fuzz: Fuzz) -> None:
    def sweep(method: MethodDescriptor) -> None:
        @FUZZ_SETTINGS
        @seed(FUZZ_SEED)
        @given(messages(method.input_type))
        def one(req: Message) -> None:
            fuzz.check(method, req)

        one()

    for method in METHODS:
        sweep(method)
    fuzz.still_serving()
    # The daemon did answer most of them with a real refusal, not just OK.
    refused = [n for n, codes in fuzz.seen.items() if codes - {grpc.StatusCode.OK}]
    assert len(refused) > len(METHODS) // 2, fuzz.seen


def test_random_bytes_on_every_method(fuzz: Fuzz) -> None:
    def sweep(method: MethodDescriptor) -> None:
        @settings(FUZZ_SETTINGS, max_examples=5)
        @seed(FUZZ_SEED)
        @given(st.one_of(st.binary(min_size=1, max_size=256), st.just(b"\xff" * 11)))
        def one(raw: bytes) -> None:
            fuzz.check(method, raw)

        one()

    for method in METHODS:
        sweep(method)
    fuzz.still_serving()


def test_oversized_requests_are_resource_exhausted(fuzz: Fuzz) -> None:
    big = "x" * (MAX_MESSAGE + 1024)
    requests: list[tuple[str, Message]] = [
        ("ContainerStatus", cri_pb2.ContainerStatusRequest(container_id=big)),
        ("ExecSync", cri_pb2.ExecSyncRequest(container_id="x", cmd=[big])),
        ("PullImage", cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=big))),
        ("RunPodSandbox", cri_pb2.RunPodSandboxRequest(
            config=cri_pb2.PodSandboxConfig(annotations={"a": big}))),
    ]  # fmt: skip
    for name, req in requests:
        m = next(x for x in METHODS if x.name == name)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        call = fuzz.channel.unary_unary(
            _path(m),
            request_serializer=type(req).SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (name, err.value)
        fuzz.still_serving()


def test_truncated_and_lying_length_prefixes(fuzz: Fuzz) -> None:
    """Protobuf that claims more bytes than it has, or nests without end."""
    m = next(x for x in METHODS if x.name == "CreateContainer")
    bodies = [
        b"\x0a\xff\xff\xff\x0f",  # field 1, length 2**32-1, no bytes
        b"\x12" + b"\x0a\x80\x01" * 100,  # nested lengths that run past the end
        b"\x12\x02\x0a" + b"\x0a" * 5000,
        b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
        b"\x12\x7f" + b"\x12\x7d" * 200,  # nesting deeper than the parser allows
    ]
    for raw in bodies:
        fuzz.check(m, raw)
    fuzz.still_serving()


# -- deep: container configs against a real pod and image ---------------------------


@pytest.fixture(scope="module")
def real_pod(fault_images: FaultImages, leak_check: LeakCheck) -> Iterator[tuple[Fuzz, str, Path]]:
    base = new_base("fp")
    config = {"cri": {"sandbox_image": fault_images.ref("pause")}}
    d = PyctrDaemon(base, dump_toml(config)).start()
    f = Fuzz(d)
    pod_id = ""
    cgroup = cgroups.pod_parent(TOKEN, "fuzz")
    try:
        f.channel.unary_unary(
            "/runtime.v1.ImageService/PullImage",
            request_serializer=cri_pb2.PullImageRequest.SerializeToString,
            response_deserializer=cri_pb2.PullImageResponse.FromString,
        )(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=fault_images.ref("busybox"))),
          timeout=60)  # fmt: skip
        pod = cri_pb2.PodSandboxConfig(
            metadata=cri_pb2.PodSandboxMetadata(name="fuzz", uid="fuzz-uid", namespace="t"),
            log_directory=str(base / "logs"),
            linux=cri_pb2.LinuxPodSandboxConfig(
                cgroup_parent=cgroup,
                security_context=cri_pb2.LinuxSandboxSecurityContext(
                    namespace_options=cri_pb2.NamespaceOption(network=cri_pb2.NODE)
                ),
            ),
        )
        rt = _rt(f)
        pod_id = rt.RunPodSandbox(
            cri_pb2.RunPodSandboxRequest(config=pod), timeout=60
        ).pod_sandbox_id
        yield f, pod_id, base
    finally:
        rt = _rt(f)
        if pod_id:
            with contextlib.suppress(grpc.RpcError):
                rt.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
                rt.RemovePodSandbox(
                    cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60
                )
        f.channel.close()
        d.stop()
        cgroups.remove_pod_cgroups([cgroup])
        safe_rmtree(base)


def _rt(f: Fuzz) -> Any:
    from pyctr.proto import cri_pb2_grpc

    return cri_pb2_grpc.RuntimeServiceStub(f.channel)


def test_random_container_configs_in_a_real_pod(
    real_pod: tuple[Fuzz, str, Path], fault_images: FaultImages
) -> None:
    fuzz, pod_id, base = real_pod
    method = next(m for m in METHODS if m.name == "CreateContainer")
    host_dir = base / "hostpaths"
    host_dir.mkdir(exist_ok=True)
    image = fault_images.ref("busybox")

    @settings(FUZZ_SETTINGS, max_examples=80)
    @seed(FUZZ_SEED)
    @given(
        messages(cri_pb2.ContainerConfig.DESCRIPTOR, max_depth=5),
        st.sampled_from([True, True, True, False]),
        st.integers(0, 2**32 - 1),
    )
    def one(config: cri_pb2.ContainerConfig, valid: bool, attempt: int) -> None:
        # Keep the host side of the fuzzing in a test dir: the CRI creates
        # missing hostPath dirs, as the kubelet expects.
        for m in config.mounts:
            clean = "/".join(p for p in m.host_path.split("/") if p not in ("", ".", ".."))
            m.host_path = str(host_dir / clean.replace("\0", "_"))[:4000]
        if valid:  # mostly get past the first checks, to the deep ones
            config.image.image = image
            config.metadata.name = f"c{attempt}"
            config.metadata.attempt = attempt
        req = cri_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config)
        code, resp = fuzz.call_for(method, req)
        fuzz.seen.setdefault("deep", set()).add(code)
        if resp is not None:
            rt = _rt(fuzz)
            rt.RemoveContainer(
                cri_pb2.RemoveContainerRequest(container_id=resp.container_id), timeout=30
            )
        assert fuzz.d.proc is not None and fuzz.d.proc.poll() is None, "pyctrd died"

    try:
        one()
    finally:
        rt = _rt(fuzz)
        listed = rt.ListContainers(cri_pb2.ListContainersRequest(), timeout=30).containers
        for c in listed:
            rt.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=c.id), timeout=30)
    fuzz.still_serving()
    # Some configs were taken (and removed again), others refused: the fuzz went deep.
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= fuzz.seen["deep"]
