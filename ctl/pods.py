"""`pyctr pods ls|ps|inspect|logs|stats`: the kubelet's pods and containers, over the CRI.

The same socket serves the CRI, so the pods a kubelet made are one call away:
no crictl needed. Pods are named by ID prefix or by `namespace/name` (or a
name alone when it is unique); containers by ID prefix or `pod-name/container`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from google.protobuf import json_format

from pyctr.ctl.client import Client, CliError
from pyctr.ctl.containers import duration
from pyctr.ctl.output import print_json, print_table, to_data
from pyctr.ctl.terminal import write_all
from pyctr.proto import cri_pb2 as cri
from pyctr.proto import cri_pb2_grpc

EXIT_NOT_FOUND = 3
POD_STATES = {"ready": cri.SANDBOX_READY, "notready": cri.SANDBOX_NOTREADY}
CONTAINER_STATES = {
    cri.CONTAINER_CREATED: "Created",
    cri.CONTAINER_RUNNING: "Running",
    cri.CONTAINER_EXITED: "Exited",
    cri.CONTAINER_UNKNOWN: "Unknown",
}


def register(sub: argparse._SubParsersAction) -> None:
    pods = sub.add_parser("pods", aliases=["pod"], help="the kubelet's pods and containers (CRI)")
    psub = pods.add_subparsers(dest="pods_command", metavar="SUBCOMMAND", required=True)
    p = psub.add_parser("ls", aliases=["list"], help="list pods")
    _filters(p)
    p.add_argument("--state", choices=sorted(POD_STATES), help="only pods in this state")
    p.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    p.set_defaults(func=list_pods)
    p = psub.add_parser("ps", help="list the pods' containers")
    _filters(p)
    p.add_argument("pod", nargs="?", help="only this pod's")
    p.add_argument("-a", "--all", action="store_true", help="also those not running")
    p.set_defaults(func=list_containers)
    p = psub.add_parser("inspect", help="a pod's status, config and containers (JSON)")
    p.add_argument("pod")
    p.set_defaults(func=inspect)
    p = psub.add_parser("logs", help="a pod container's output, from the kubelet's log file")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it exits")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
    p.add_argument("container")
    p.set_defaults(func=logs)
    p = psub.add_parser("stats", help="CPU, memory and processes of each pod")
    _filters(p)
    p.set_defaults(func=stats)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="only pods of this Kubernetes namespace")
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V")


def _rt(client: Client) -> cri_pb2_grpc.RuntimeServiceStub:
    return cri_pb2_grpc.RuntimeServiceStub(client.channel)


def _labels(items: list[str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in items)


def _pods(client: Client, opts: argparse.Namespace) -> list[cri.PodSandbox]:
    f = cri.PodSandboxFilter(label_selector=_labels(opts.label))
    if getattr(opts, "state", None):
        f.state.state = POD_STATES[opts.state]
    found = _rt(client).ListPodSandbox(cri.ListPodSandboxRequest(filter=f), timeout=client.timeout)
    pods = [p for p in found.items if not opts.namespace or p.metadata.namespace == opts.namespace]
    return sorted(pods, key=lambda p: (p.metadata.namespace, p.metadata.name, -p.created_at))


def _containers(client: Client, pod_id: str = "") -> list[cri.Container]:
    f = cri.ContainerFilter(pod_sandbox_id=pod_id)
    req = cri.ListContainersRequest(filter=f)
    return list(_rt(client).ListContainers(req, timeout=client.timeout).containers)


def find_pod(client: Client, ref: str) -> cri.PodSandbox:
    pods = _rt(client).ListPodSandbox(cri.ListPodSandboxRequest(), timeout=client.timeout).items
    namespace, _, name = ref.rpartition("/")
    matches = [p for p in pods if p.id.startswith(ref)] or [
        p for p in pods
        if p.metadata.name == name and (not namespace or p.metadata.namespace == namespace)
    ]  # fmt: skip
    if not matches:
        raise CliError(f"no pod {ref!r}", EXIT_NOT_FOUND)
    ready = [p for p in matches if p.state == cri.SANDBOX_READY]
    if len(matches) > 1 and len(ready) != 1:
        raise CliError(f"{ref!r} names {len(matches)} pods: give more of the ID")
    return ready[0] if len(matches) > 1 else matches[0]


def find_container(client: Client, ref: str) -> cri.Container:
    every = _containers(client)
    matches = [c for c in every if c.id.startswith(ref)]
    if not matches and "/" in ref:
        pod_ref, _, name = ref.rpartition("/")
        pod = find_pod(client, pod_ref)
        matches = [c for c in every if c.pod_sandbox_id == pod.id and c.metadata.name == name]
        matches.sort(key=lambda c: -c.metadata.attempt)  # the latest attempt first
        matches = matches[:1]
    if not matches:
        raise CliError(f"no pod container {ref!r}", EXIT_NOT_FOUND)
    if len(matches) > 1:
        raise CliError(f"{ref!r} names {len(matches)} containers: give more of the ID")
    return matches[0]


def _age(ns: int, now: int) -> str:
    return f"{duration((now - ns) / 1e9)} ago" if ns else "-"


def list_pods(client: Client, opts: argparse.Namespace) -> int:
    pods = _pods(client, opts)
    if opts.quiet:
        for p in pods:
            print(p.id)
        return 0
    counts: dict[str, list[int]] = {p.id: [0, 0] for p in pods}
    for c in _containers(client):
        if c.pod_sandbox_id in counts:
            counts[c.pod_sandbox_id][1] += 1
            counts[c.pod_sandbox_id][0] += c.state == cri.CONTAINER_RUNNING
    if opts.output == "json":
        print_json([{**to_data(p), "containers_running": counts[p.id][0],
                     "containers": counts[p.id][1]} for p in pods])  # fmt: skip
        return 0
    now = time.time_ns()
    rows = [
        [
            p.id[:13], p.metadata.name, p.metadata.namespace,
            "Ready" if p.state == cri.SANDBOX_READY else "NotReady",
            f"{counts[p.id][0]}/{counts[p.id][1]}", p.metadata.attempt, _age(p.created_at, now),
            p.runtime_handler or "(default)",
        ]
        for p in pods
    ]  # fmt: skip
    print_table(
        ["POD ID", "NAME", "NAMESPACE", "STATE", "RUNNING", "ATTEMPT", "CREATED", "RUNTIME"], rows
    )
    return 0


def list_containers(client: Client, opts: argparse.Namespace) -> int:
    pods = {p.id: p for p in _pods(client, opts)}
    if opts.pod:
        pod = find_pod(client, opts.pod)
        pods = {pod.id: pod} if pod.id in pods else {}
    found = [
        c for c in _containers(client)
        if c.pod_sandbox_id in pods and (opts.all or c.state == cri.CONTAINER_RUNNING)
        and all(c.labels.get(k) == v for k, v in _labels(opts.label).items())
    ]  # fmt: skip
    if opts.output == "json":
        print_json([to_data(c) for c in found])
        return 0
    now = time.time_ns()
    rows = [
        [
            c.id[:13], c.metadata.name, pods[c.pod_sandbox_id].metadata.name,
            pods[c.pod_sandbox_id].metadata.namespace, CONTAINER_STATES.get(c.state, "?"),
            c.metadata.attempt, _age(c.created_at, now), c.image.image or c.image_ref,
        ]
        for c in found
    ]  # fmt: skip
    print_table(
        ["CONTAINER", "NAME", "POD", "NAMESPACE", "STATE", "ATTEMPT", "CREATED", "IMAGE"], rows
    )
    return 0


def _verbose_info(info: Any) -> dict[str, Any]:
    out = {}
    for key, value in info.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def inspect(client: Client, opts: argparse.Namespace) -> int:
    pod = find_pod(client, opts.pod)
    rt = _rt(client)
    req = cri.PodSandboxStatusRequest(pod_sandbox_id=pod.id, verbose=True)
    resp = rt.PodSandboxStatus(req, timeout=client.timeout)
    containers = []
    for c in _containers(client, pod.id):
        st = rt.ContainerStatus(
            cri.ContainerStatusRequest(container_id=c.id), timeout=client.timeout
        )
        containers.append(to_data(st.status))
    print_json({"status": to_data(resp.status), "info": _verbose_info(resp.info),
                "containers": containers})  # fmt: skip
    return 0


def _cri_lines(data: bytes) -> tuple[list[tuple[str, str, bool, bytes]], bytes]:
    """Complete CRI log lines (time, stream, full, content) and the unfinished rest."""
    lines, newline, rest = data.rpartition(b"\n")
    out = []
    for line in lines.split(b"\n") if newline else []:
        parts = line.split(b" ", 3)
        if len(parts) == 4:
            out.append((parts[0].decode(), parts[1].decode(), parts[2] == b"F", parts[3]))
    return out, rest


def logs(client: Client, opts: argparse.Namespace) -> int:
    c = find_container(client, opts.container)
    rt = _rt(client)
    status = rt.ContainerStatus(
        cri.ContainerStatusRequest(container_id=c.id), timeout=client.timeout
    )
    path = status.status.log_path
    if not path:
        raise CliError(f"container {c.id[:13]} has no log file (the pod has no log_directory)")
    out, err = sys.stdout.fileno(), sys.stderr.fileno()
    start_of_line = {"stdout": True, "stderr": True}
    try:
        f = open(path, "rb")  # noqa: SIM115 (kept open while following)
    except FileNotFoundError:
        raise CliError(f"no log file at {path} yet", EXIT_NOT_FOUND) from None
    with f:
        pending = b""
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                lines, pending = _cri_lines(pending + chunk)
                for stamp, stream, full, content in lines:
                    data = content + (b"\n" if full else b"")
                    if opts.timestamps and start_of_line.get(stream, True):
                        data = stamp.encode() + b" " + data
                    start_of_line[stream] = full
                    write_all(err if stream == "stderr" else out, data)
                continue
            if not opts.follow:
                return 0
            req = cri.ContainerStatusRequest(container_id=c.id)
            if (
                rt.ContainerStatus(req, timeout=client.timeout).status.state
                != cri.CONTAINER_RUNNING
            ):
                opts.follow = False  # it is over: print what it wrote last, then stop
                continue
            time.sleep(0.2)


def stats(client: Client, opts: argparse.Namespace) -> int:
    pods = {p.id: p for p in _pods(client, opts) if p.state == cri.SANDBOX_READY}
    req = cri.ListPodSandboxStatsRequest(filter=cri.PodSandboxStatsFilter())
    found = [s for s in _rt(client).ListPodSandboxStats(req, timeout=client.timeout).stats
             if s.attributes.id in pods]  # fmt: skip
    if opts.output == "json":
        print_json([json_format.MessageToDict(s, preserving_proto_field_name=True) for s in found])
        return 0
    rows = []
    for s in found:
        linux = s.linux
        rows.append([
            s.attributes.id[:13], s.attributes.metadata.name, s.attributes.metadata.namespace,
            f"{linux.cpu.usage_core_nano_seconds.value / 1e9:.2f}s",
            f"{linux.memory.working_set_bytes.value / (1 << 20):.1f} MiB",
            linux.process.process_count.value, len(linux.containers),
        ])  # fmt: skip
    print_table(["POD ID", "NAME", "NAMESPACE", "CPU", "MEMORY", "PROCESSES", "CONTAINERS"], rows)
    return 0
