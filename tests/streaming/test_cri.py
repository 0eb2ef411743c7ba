"""End to end: CRI Exec / Attach / PortForward on pyctrd, then the URL, as crictl does.

Uses the CRI tests' module environment (a pyctrd, a registry and a pod
network inside a private "host" network namespace). The streaming server
listens on 127.0.0.1 there, so the test's client connects from inside it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet, code_of, cri_env, kube  # noqa: F401
from tests.streaming.kube import V4, open_command_streams, spdy_command
from tests.streaming.spdyclient import SpdyClient

pytestmark = pytest.mark.root


@pytest.fixture
def pod(kube: Kubelet) -> tuple[str, cri.PodSandboxConfig]:  # noqa: F811
    config = kube.pod_config("stream")
    return kube.run_pod(config), config


def rpc_error(call: Any, request: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=10)
    return code_of(e.value)


async def test_exec_through_the_cri(
    cri_env: CriEnv,  # noqa: F811
    kube: Kubelet,  # noqa: F811
    pod: tuple[str, cri.PodSandboxConfig],
) -> None:
    cid = kube.run(*pod, "app")
    req = cri.ExecRequest(
        container_id=cid[:12],  # crictl accepts ID prefixes
        cmd=[BB, "sh", "-c", "read x; echo got $x; exit 3"],
        stdin=True, stdout=True, stderr=True,
    )  # fmt: skip
    url = cri_env.rt.Exec(req, timeout=10).url
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    result = await spdy_command(url, stdin=b"hello\n", netns_path=str(cri_env.host_ns))
    assert result.stdout == b"got hello\n"
    assert result.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]

    # What the CRI refuses before any URL is made.
    exec_ = cri_env.rt.Exec
    assert rpc_error(exec_, cri.ExecRequest(container_id=cid, cmd=[], stdout=True)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    tty_stderr = cri.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stdout=True, stderr=True)
    assert rpc_error(exec_, tty_stderr) == grpc.StatusCode.INVALID_ARGUMENT
    no_stdio = cri.ExecRequest(container_id=cid, cmd=["sh"])
    assert rpc_error(exec_, no_stdio) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = cri.ExecRequest(container_id="f" * 64, cmd=["sh"], stdout=True)
    assert rpc_error(exec_, unknown) == grpc.StatusCode.NOT_FOUND
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    stopped = cri.ExecRequest(container_id=cid, cmd=["sh"], stdout=True)
    assert rpc_error(exec_, stopped) == grpc.StatusCode.FAILED_PRECONDITION


async def test_attach_through_the_cri(
    cri_env: CriEnv,  # noqa: F811
    kube: Kubelet,  # noqa: F811
    pod: tuple[str, cri.PodSandboxConfig],
) -> None:
    script = 'while read line; do echo "in:$line"; done'
    cid = kube.run(*pod, "echoer", [BB, "sh", "-c", script], stdin=True)
    req = cri.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    url = cri_env.rt.Attach(req, timeout=10).url
    client, protocol = await SpdyClient.connect(url, [V4], netns_path=str(cri_env.host_ns))
    try:
        ids = await open_command_streams(
            client, stdin=True, stdout=True, stderr=True, tty=False, protocol=protocol
        )
        await client.send(ids["stdin"], b"ping\n")
        await client.wait_for(ids["stdout"], lambda out: out == b"in:ping\n")
    finally:
        await client.close()
    # The container outlives the attach.
    assert kube.status(cid).state == cri.CONTAINER_RUNNING


async def test_port_forward_through_the_cri(
    cri_env: CriEnv,  # noqa: F811
    kube: Kubelet,  # noqa: F811
    pod: tuple[str, cri.PodSandboxConfig],
) -> None:
    pod_id, config = pod
    kube.run(pod_id, config, "web", [BB, "httpd", "-f", "-p", "8080", "-h", "/www"])
    req = cri.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080])
    url = cri_env.rt.PortForward(req, timeout=10).url
    client, protocol = await SpdyClient.connect(
        url, ["portforward.k8s.io"], netns_path=str(cri_env.host_ns)
    )
    try:
        headers = {"port": "8080", "requestID": "0"}
        body = b""
        for _ in range(50):  # httpd may still be starting
            headers["requestID"] = str(int(headers["requestID"]) + 1)
            error = await client.open_stream({**headers, "streamType": "error"})
            await client.close_stream(error)
            data = await client.open_stream({**headers, "streamType": "data"})
            await client.send(data, b"GET /index.html HTTP/1.0\r\n\r\n", fin=True)
            body = await client.read_until_fin(data)
            if body:
                break
            await asyncio.sleep(0.1)
        assert body.startswith(b"HTTP/1.") and body.endswith(b"hello from the pod\n")
    finally:
        await client.close()
    bad = cri.PortForwardRequest(pod_sandbox_id="f" * 64, port=[80])
    assert rpc_error(cri_env.rt.PortForward, bad) == grpc.StatusCode.NOT_FOUND
    bad = cri.PortForwardRequest(pod_sandbox_id=pod_id, port=[70000])
    assert rpc_error(cri_env.rt.PortForward, bad) == grpc.StatusCode.INVALID_ARGUMENT
