"""`pyctr ps|inspect|logs|start|kill|stop|rm|wait`: containers by ID prefix or name."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import grpc

from pyctr.ctl.client import Client, CliError, rpc_error
from pyctr.ctl.output import print_json, print_table, to_data
from pyctr.ctl.terminal import write_all
from pyctr.proto import containers_pb2 as pb
from pyctr.proto import containers_pb2_grpc


def _output_flag(p: argparse.ArgumentParser) -> None:
    # Also accepted after the subcommand; SUPPRESS keeps the global value otherwise.
    p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="also those not running")
    p.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    p.add_argument("--no-trunc", action="store_true", help="full IDs and commands")
    p.add_argument("--sandboxes", action="store_true", help="include CRI pod sandboxes")
    p.add_argument(
        "-A", "--all-namespaces", action="store_true",
        help="also the kubelet's containers (MANAGED BY tells them apart)",
    )  # fmt: skip
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V")
    _output_flag(p)
    p.set_defaults(func=ps)

    p = sub.add_parser("inspect", help="a container's record, status and OCI spec (JSON)")
    p.add_argument("container")
    p.set_defaults(func=inspect)

    p = sub.add_parser("logs", help="a container's output, from its log file")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it exits")
    p.add_argument(
        "-n", "--tail", type=int, default=None, metavar="N", help="only the last N lines"
    )
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
    p.add_argument("--since", type=float, default=0, metavar="SECONDS",
                   help="only lines of the last SECONDS")  # fmt: skip
    p.add_argument("container")
    p.set_defaults(func=logs)

    p = sub.add_parser("start", help="start created containers")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=start)

    p = sub.add_parser("kill", help="send a signal to containers")
    p.add_argument("-s", "--signal", default="KILL", help="name or number (default KILL)")
    p.add_argument("--all", action="store_true", help="every process, not only the first")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=kill)

    p = sub.add_parser("stop", help="SIGTERM, then SIGKILL after a timeout")
    p.add_argument("-t", "--time", type=float, default=10.0, dest="stop_timeout",
                   metavar="SECONDS", help="wait before SIGKILL (default 10)")  # fmt: skip
    p.add_argument("-s", "--signal", default="TERM", help="the first signal (default TERM)")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=stop)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=remove)

    p = sub.add_parser("wait", help="wait for containers to exit; print their exit codes")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=wait)


def _stub(client: Client) -> containers_pb2_grpc.ContainersStub:
    return containers_pb2_grpc.ContainersStub(client.channel)


def parse_signal(text: str) -> int:
    """9, KILL, SIGKILL, kill → 9."""
    if text.isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise CliError(f"signal {text} is out of range", 2)
        return number
    name = text.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise CliError(f"unknown signal {text!r}", 2) from None


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def status_text(c: pb.ContainerInfo, now_ns: int | None = None) -> str:
    now = now_ns or time.time_ns()
    if c.status == "running":
        return f"Up {duration((now - c.started_at) / 1e9)}"
    if c.status == "exited":
        if c.reason == "StartError":
            return f"StartError ({c.exit_code}) {duration((now - c.finished_at) / 1e9)} ago"
        return f"Exited ({c.exit_code}) {duration((now - c.finished_at) / 1e9)} ago"
    return c.status.capitalize()


def _command(c: pb.ContainerInfo, full: bool) -> str:
    text = " ".join(c.args)
    if not full and len(text) > 24:
        text = text[:23] + "…"
    return json.dumps(text, ensure_ascii=False)


def _each(client: Client, refs: list[str], call: Any) -> int:
    """Apply call to every container; report failures, go on; 1 if any failed."""
    failed = 0
    for ref in refs:
        try:
            call(ref)
        except grpc.RpcError as e:
            print(f"pyctr: {ref}: {rpc_error(e, client.address)}", file=sys.stderr)
            failed = 1
    return failed


def ps(client: Client, opts: argparse.Namespace) -> int:
    labels = {}
    for item in opts.label:
        key, _, value = item.partition("=")
        labels[key] = value
    req = pb.ContainerListRequest(all=opts.all, labels=labels, sandboxes=opts.sandboxes)
    found = list(_stub(client).List(req, timeout=client.timeout).containers)
    if opts.output == "json":
        print_json([to_data(c) for c in found])
        return 0
    if opts.quiet:
        for c in found:
            print(c.id if opts.no_trunc else c.id[:12])
        return 0
    now = time.time_ns()
    rows = [
        [
            c.id if opts.no_trunc else c.id[:12],
            c.image,
            _command(c, opts.no_trunc),
            f"{duration((now - c.created_at) / 1e9)} ago",
            status_text(c, now),
            c.name,
        ]
        for c in found
    ]
    headers = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    if opts.all_namespaces:
        headers.append("MANAGED BY")
        rows = [[*r, "pyctr"] for r in rows] + _kubelet_rows(client, opts, now)
    print_table(headers, rows)
    return 0


def _kubelet_rows(client: Client, opts: argparse.Namespace, now: int) -> list[list[Any]]:
    """The CRI containers, as `ps` rows: what the kubelet made on this node."""
    from pyctr.ctl.pods import CONTAINER_STATES
    from pyctr.proto import cri_pb2 as cri
    from pyctr.proto import cri_pb2_grpc

    rt = cri_pb2_grpc.RuntimeServiceStub(client.channel)
    pods = {
        p.id: p
        for p in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=client.timeout).items
    }
    rows = []
    for c in rt.ListContainers(cri.ListContainersRequest(), timeout=client.timeout).containers:
        if not opts.all and c.state != cri.CONTAINER_RUNNING:
            continue
        pod = pods.get(c.pod_sandbox_id)
        where = f"{pod.metadata.namespace}/{pod.metadata.name}" if pod else c.pod_sandbox_id[:12]
        rows.append([
            c.id if opts.no_trunc else c.id[:12], c.image.image, "",
            f"{duration((now - c.created_at) / 1e9)} ago", CONTAINER_STATES.get(c.state, "?"),
            f"{where}/{c.metadata.name}", "kubelet",
        ])  # fmt: skip
    return rows


def inspect(client: Client, opts: argparse.Namespace) -> int:
    resp = _stub(client).Get(pb.ContainerGetRequest(container=opts.container))
    data = to_data(resp.container)
    data["spec"] = json.loads(resp.spec_json or "{}")
    print_json(data)
    return 0


def _rfc3339(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def logs(client: Client, opts: argparse.Namespace) -> int:
    req = pb.ContainerLogsRequest(container=opts.container, follow=opts.follow)
    if opts.tail is not None:
        req.tail = max(0, opts.tail)
    if opts.since:
        req.since = time.time_ns() - int(opts.since * 1e9)
    # Following has no deadline; a plain read gets a generous one.
    timeout = None if opts.follow else max(client.timeout, 60)
    out, err = sys.stdout.fileno(), sys.stderr.fileno()
    line_start = {"stdout": True, "stderr": True}
    for resp in _stub(client).Logs(req, timeout=timeout):
        for entry in resp.entries:
            data = entry.data
            if opts.timestamps and line_start[entry.stream]:
                data = _rfc3339(entry.timestamp).encode() + b" " + data
            line_start[entry.stream] = data.endswith(b"\n")
            write_all(err if entry.stream == "stderr" else out, data)
    return 0


def start(client: Client, opts: argparse.Namespace) -> int:
    def one(ref: str) -> None:
        _stub(client).Start(pb.ContainerStartRequest(container=ref), timeout=client.timeout)
        print(ref)

    return _each(client, opts.containers, one)


def kill(client: Client, opts: argparse.Namespace) -> int:
    sig = parse_signal(opts.signal)

    def one(ref: str) -> None:
        req = pb.ContainerKillRequest(container=ref, signal=sig, all=opts.all)
        _stub(client).Kill(req, timeout=client.timeout)
        print(ref)

    return _each(client, opts.containers, one)


def stop(client: Client, opts: argparse.Namespace) -> int:
    sig = parse_signal(opts.signal)

    def one(ref: str) -> None:
        req = pb.ContainerStopRequest(container=ref, timeout=opts.stop_timeout, signal=sig)
        _stub(client).Stop(req, timeout=client.timeout + opts.stop_timeout + 15)
        print(ref)

    return _each(client, opts.containers, one)


def remove(client: Client, opts: argparse.Namespace) -> int:
    def one(ref: str) -> None:
        req = pb.ContainerRemoveRequest(container=ref, force=opts.force)
        _stub(client).Remove(req, timeout=client.timeout + 15)
        print(ref)

    return _each(client, opts.containers, one)


def wait(client: Client, opts: argparse.Namespace) -> int:
    def one(ref: str) -> None:
        c = _stub(client).Wait(pb.ContainerWaitRequest(container=ref)).container
        print(c.exit_code)

    return _each(client, opts.containers, one)
