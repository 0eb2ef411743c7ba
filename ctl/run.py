"""`pyctr run`, `create`, `exec` and `attach`: processes with their stdio here.

`run` pulls the image if it is missing, creates the container, attaches to
its stdio *before* starting it (so no early output is lost), starts it and
exits with its exit code (128+N when signal N killed it). Without -t, Ctrl-C
and SIGTERM/SIGHUP are forwarded to the container; with -t the terminal is
raw and keys go to the container's own terminal.

Exit codes besides the process's own (as docker): 125 when the container
could not be created or started (the message says why), 126/127 are left
to the process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
from typing import Any

import grpc

from pyctr.ctl.client import Client, CliError, rpc_error
from pyctr.ctl.terminal import IOSession, local_size
from pyctr.proto import containers_pb2 as pb
from pyctr.proto import containers_pb2_grpc, images_pb2, images_pb2_grpc

EXIT_RUN_FAILED = 125


def _create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="", help="container name (default: generated)")
    p.add_argument("-t", "--tty", action="store_true", help="give the process a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (K alone: take ours)")  # fmt: skip
    p.add_argument("--mount", "--volume", dest="mounts", action="append", default=[],
                   metavar="SRC:DST[:ro]", help="bind-mount a host path")  # fmt: skip
    p.add_argument("-u", "--user", default="", help="user[:group] inside the image")
    p.add_argument("-w", "--workdir", default="", help="working directory inside the container")
    p.add_argument("--net", "--network", dest="network", default="", choices=["", "host", "none"],
                   help="host: share the host's network (default: own, loopback only)")  # fmt: skip
    p.add_argument("--entrypoint", default=None, help="replace the image's entrypoint")
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V")
    p.add_argument("--hostname", default="", help="default: the short container ID")
    p.add_argument("--read-only", action="store_true", help="mount the rootfs read-only")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER, help="replaces the image's Cmd")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a command in a new container")
    p.add_argument("-d", "--detach", action="store_true", help="print the ID and leave it running")
    _create_flags(p)
    p.set_defaults(func=run)

    p = sub.add_parser("create", help="create a container (start it with `pyctr start`)")
    _create_flags(p)
    p.set_defaults(func=create)

    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-u", "--user", default="")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=exec_)

    p = sub.add_parser("attach", help="attach to a running container's stdio")
    p.add_argument("--no-stdin", action="store_true", help="do not forward stdin")
    p.add_argument("container")
    p.set_defaults(func=attach)


def _stub(client: Client) -> containers_pb2_grpc.ContainersStub:
    return containers_pb2_grpc.ContainersStub(client.channel)


def _key_values(items: list[str], what: str, from_env: bool = False) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise CliError(f"{what} {item!r}: expected KEY=VALUE")
        if not sep:
            if not from_env:
                raise CliError(f"{what} {item!r}: expected KEY=VALUE")
            if key not in os.environ:
                continue
            value = os.environ[key]
        out.append((key, value))
    return out


def _mount(spec: str) -> pb.ContainerMount:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise CliError(f"--mount {spec!r}: expected SRC:DST[:ro]")
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise CliError(f"--mount {spec!r}: the option must be ro or rw")
    return pb.ContainerMount(
        source=os.path.abspath(parts[0]),
        destination=parts[1],
        readonly=len(parts) == 3 and parts[2] == "ro",
    )


def create_request(opts: argparse.Namespace) -> pb.ContainerCreateRequest:
    command = list(opts.command)
    if command and command[0] == "--":
        command = command[1:]
    req = pb.ContainerCreateRequest(
        image=opts.image,
        name=opts.name,
        args=command,
        env=[f"{k}={v}" for k, v in _key_values(opts.env, "--env", from_env=True)],
        workdir=opts.workdir,
        user=opts.user,
        tty=opts.tty,
        stdin=opts.interactive,
        mounts=[_mount(m) for m in opts.mounts],
        labels=dict(_key_values(opts.label, "--label")),
        network=opts.network,
        auto_remove=opts.rm,
        hostname=opts.hostname,
        readonly_rootfs=opts.read_only,
    )
    if opts.entrypoint is not None:
        req.command[:] = [opts.entrypoint] if opts.entrypoint else []
    size = local_size() if opts.tty else None
    if size:
        req.size.CopyFrom(pb.ContainerResize(width=size[0], height=size[1]))
    return req


def ensure_image(client: Client, reference: str) -> None:
    """Pull the image unless the daemon has it (progress on stderr)."""
    stub = images_pb2_grpc.ImagesStub(client.channel)
    try:
        stub.Get(images_pb2.ImageGetRequest(reference=reference), timeout=client.timeout)
        return
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            raise
    print(f"Unable to find image {reference!r} locally; pulling", file=sys.stderr, flush=True)
    stream = stub.Pull(images_pb2.ImagePullRequest(reference=reference))
    for final in collections.deque(stream, maxlen=1):  # only the last message matters
        print(f"{final.reference}: {final.image.id}", file=sys.stderr, flush=True)


def create(client: Client, opts: argparse.Namespace) -> int:
    req = create_request(opts)
    try:
        ensure_image(client, opts.image)
        c = _stub(client).Create(req, timeout=client.timeout).container
    except grpc.RpcError as e:
        raise _failed(e, client) from None
    print(c.id)
    return 0


def _failed(e: grpc.RpcError, client: Client) -> CliError:
    err = rpc_error(e, client.address)
    err.code = EXIT_RUN_FAILED
    return err


def run(client: Client, opts: argparse.Namespace) -> int:
    req = create_request(opts)
    stub = _stub(client)
    try:
        ensure_image(client, opts.image)
        if opts.detach:
            c = stub.Run(req, timeout=client.timeout).container
            print(c.id)
            return 0
        c = stub.Create(req, timeout=client.timeout).container
    except grpc.RpcError as e:
        raise _failed(e, client) from None
    code = asyncio.run(_attach_start(client, c.id, opts.tty, opts.interactive))
    if opts.rm:
        # The daemon removes it too (auto_remove); this makes it gone when we exit.
        try:
            stub.Remove(pb.ContainerRemoveRequest(container=c.id, force=True), timeout=60)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                print(f"pyctr: {rpc_error(e, client.address)}", file=sys.stderr)
    return code


def _aio_channel(client: Client) -> grpc.aio.Channel:
    client.channel  # noqa: B018 (checks the socket with a clear message first)
    return grpc.aio.insecure_channel(
        f"unix:{client.address}", options=[("grpc.enable_http_proxy", 0)]
    )


def _exit_code(exit: pb.ContainerExit | None, what: str) -> int:
    if exit is None:
        raise CliError(f"lost the connection to {what} before it exited", EXIT_RUN_FAILED)
    return exit.exit_code


async def _attach_start(client: Client, cid: str, tty: bool, stdin: bool) -> int:
    async with _aio_channel(client) as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)
        call = stub.Attach()
        try:
            open_ = pb.ContainerAttachOpen(container=cid, stdin=stdin)
            await call.write(pb.ContainerAttachRequest(open=open_))
            await call.read()  # ready: output from now on reaches us
            await stub.Start(pb.ContainerStartRequest(container=cid), timeout=client.timeout)
        except grpc.RpcError as e:
            call.cancel()
            raise _failed(e, client) from None
        session = IOSession(
            call,
            pb.ContainerAttachRequest,
            tty=tty,
            stdin=stdin,
            # A raw terminal sends Ctrl-C as a byte; otherwise signals are forwarded.
            forward_signal=None if tty and stdin else _forwarder(stub, cid),
        )
        exit = await session.run()
        call.cancel()
    return _exit_code(exit, f"container {cid[:12]}")


def _forwarder(stub: Any, cid: str) -> Any:
    async def forward(sig: int) -> None:
        with contextlib.suppress(grpc.RpcError):  # it exited: its exit is on the way
            await stub.Kill(pb.ContainerKillRequest(container=cid, signal=sig), timeout=10)

    return forward


def attach(client: Client, opts: argparse.Namespace) -> int:
    c = _stub(client).Get(pb.ContainerGetRequest(container=opts.container)).container
    return asyncio.run(_attach(client, c, not opts.no_stdin and c.stdin))


async def _attach(client: Client, c: pb.ContainerInfo, stdin: bool) -> int:
    async with _aio_channel(client) as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)
        call = stub.Attach()
        await call.write(
            pb.ContainerAttachRequest(open=pb.ContainerAttachOpen(container=c.id, stdin=stdin))
        )
        session = IOSession(
            call,
            pb.ContainerAttachRequest,
            tty=c.tty,
            stdin=stdin,
            forward_signal=None if c.tty and stdin else _forwarder(stub, c.id),
        )
        await call.read()  # ready
        if c.tty:
            session._resized()
        exit = await session.run()
        call.cancel()
    return _exit_code(exit, f"container {c.id[:12]}")


def exec_(client: Client, opts: argparse.Namespace) -> int:
    command = list(opts.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("exec: no command given", 2)
    start = pb.ContainerExecStart(
        container=opts.container,
        args=command,
        tty=opts.tty,
        stdin=opts.interactive,
        env=[f"{k}={v}" for k, v in _key_values(opts.env, "--env", from_env=True)],
        workdir=opts.workdir,
        user=opts.user,
    )
    size = local_size() if opts.tty else None
    if size:
        start.size.CopyFrom(pb.ContainerResize(width=size[0], height=size[1]))
    return asyncio.run(_exec(client, start))


async def _exec(client: Client, start: pb.ContainerExecStart) -> int:
    async with _aio_channel(client) as channel:
        call = containers_pb2_grpc.ContainersStub(channel).Exec()
        await call.write(pb.ContainerExecRequest(start=start))
        try:
            await call.read()  # ready, or the error that prevented it
        except grpc.RpcError as e:
            raise _failed(e, client) from None
        session = IOSession(call, pb.ContainerExecRequest, tty=start.tty, stdin=start.stdin)
        exit = await session.run()
        call.cancel()
    return _exit_code(exit, "the exec")
