"""`pyctr nri ls`: the NRI plugins connected to pyctrd, in call order."""

from __future__ import annotations

import argparse
import sys
import time

from pyctr.ctl.client import Client
from pyctr.ctl.containers import duration
from pyctr.ctl.output import print_json, print_table, to_data
from pyctr.proto import system_pb2 as pb
from pyctr.proto import system_pb2_grpc


def register(sub: argparse._SubParsersAction) -> None:
    nri = sub.add_parser("nri", help="NRI plugins")
    nsub = nri.add_subparsers(dest="nri_command", metavar="SUBCOMMAND", required=True)
    p = nsub.add_parser("ls", aliases=["list"], help="connected plugins, index, events")
    p.set_defaults(func=ls)


def ls(client: Client, opts: argparse.Namespace) -> int:
    stub = system_pb2_grpc.SystemStub(client.channel)
    resp = stub.ListNriPlugins(pb.ListNriPluginsRequest(), timeout=client.timeout)
    if opts.output == "json":
        print_json(to_data(resp))
        return 0
    if not resp.enabled:
        print("NRI is disabled ([nri] enable = false)")
        return 0
    print_table(
        ["INDEX", "NAME", "KIND", "PID", "STATE", "CONNECTED", "EVENTS"],
        [
            (
                p.index, p.name, p.kind, p.pid or "-",
                "ready" if p.synchronized else "joining",
                duration(time.time() - p.connected_at / 1e9) + " ago", ",".join(p.events) or "-",
            )
            for p in resp.plugins
        ],
    )  # fmt: skip
    if resp.missing:
        sys.stderr.write(f"required plugins not connected: {', '.join(resp.missing)}\n")
    return 0
