"""`pyctr snapshots ls|info|usage|rm|mount`: looking inside the snapshotter."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from pyctr.ctl.client import Client, CliError
from pyctr.ctl.images import _age, _size
from pyctr.ctl.output import print_fields, print_json, print_table, to_data
from pyctr.proto import snapshots_pb2 as pb
from pyctr.proto import snapshots_pb2_grpc


def register(sub: argparse._SubParsersAction) -> None:
    snaps = sub.add_parser(
        "snapshots", aliases=["snapshot"], help="snapshots of image layers and containers"
    )
    ssub = snaps.add_subparsers(dest="snapshots_command", metavar="SUBCOMMAND", required=True)
    p = ssub.add_parser("ls", aliases=["list"], help="list snapshots")
    p.set_defaults(func=list_snapshots)
    for name, func, text in (
        ("info", info, "one snapshot's record"),
        ("usage", usage, "disk bytes and inodes of a snapshot's own layer"),
        ("rm", remove, "remove a snapshot nothing uses"),
    ):
        p = ssub.add_parser(name, help=text)
        p.add_argument("key")
        p.set_defaults(func=func)
    p = ssub.add_parser(
        "mount", help="mount a snapshot's tree on DIR (as root); umount DIR when done"
    )
    p.add_argument("key")
    p.add_argument("dir")
    p.set_defaults(func=mount)


def _stub(client: Client) -> snapshots_pb2_grpc.SnapshotsStub:
    return snapshots_pb2_grpc.SnapshotsStub(client.channel)


def list_snapshots(client: Client, opts: argparse.Namespace) -> int:
    resp = _stub(client).List(pb.SnapshotListRequest(), timeout=client.timeout)
    if opts.output == "json":
        print_json(to_data(resp))
        return 0
    rows = [
        (
            s.key[:40],
            s.parent[:19] or "-",
            s.kind,
            _age(s.created_at),
            ", ".join(s.used_by)[:40],
        )
        for s in resp.snapshots
    ]
    print_table(["KEY", "PARENT", "KIND", "CREATED", "USED BY"], rows)
    return 0


def info(client: Client, opts: argparse.Namespace) -> int:
    s = _stub(client).Info(pb.SnapshotKeyRequest(key=opts.key), timeout=client.timeout)
    return _show(opts, s, lambda: [
        ("Key", s.key), ("Parent", s.parent or "-"), ("Kind", s.kind),
        ("Labels", json.dumps(dict(s.labels))), ("Used by", ", ".join(s.used_by) or "-"),
    ])  # fmt: skip


def usage(client: Client, opts: argparse.Namespace) -> int:
    u = _stub(client).Usage(pb.SnapshotKeyRequest(key=opts.key), timeout=client.timeout)
    return _show(opts, u, lambda: [("Size", _size(u.size_bytes)), ("Inodes", u.inodes)])


def _show(opts: argparse.Namespace, msg: Any, fields: Callable[[], list[tuple[str, Any]]]) -> int:
    """`msg` as JSON with -o json, else the fields as a list."""
    if opts.output == "json":
        print_json(to_data(msg))
    else:
        print_fields(fields())
    return 0


def remove(client: Client, opts: argparse.Namespace) -> int:
    _stub(client).Remove(pb.SnapshotKeyRequest(key=opts.key), timeout=client.timeout)
    print(opts.key)
    return 0


def mount(client: Client, opts: argparse.Namespace) -> int:
    from pyctr.snapshotter.mount import Mount, mount_all

    resp = _stub(client).Mounts(pb.SnapshotKeyRequest(key=opts.key), timeout=client.timeout)
    if not os.path.isdir(opts.dir):
        raise CliError(f"{opts.dir} is not a directory", 2)
    try:
        mount_all([Mount(m.type, m.source, list(m.options)) for m in resp.mounts], opts.dir)
    except OSError as e:
        raise CliError(f"cannot mount {opts.key} on {opts.dir}: {e.strerror or e}") from None
    print(opts.dir)
    return 0
