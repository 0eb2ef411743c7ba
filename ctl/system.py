"""`pyctr version` and `pyctr info`."""

from __future__ import annotations

import argparse
import platform

from pyctr.ctl.client import Client
from pyctr.ctl.output import print_fields, print_json, to_data
from pyctr.daemon.version import VERSION
from pyctr.proto import system_pb2 as pb
from pyctr.proto import system_pb2_grpc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="client and server versions")
    p.set_defaults(func=version)
    p = sub.add_parser("info", help="daemon paths, config, runc and kernel features")
    p.set_defaults(func=info)


def version(client: Client, opts: argparse.Namespace) -> int:
    client_info = {"version": VERSION, "python": platform.python_version()}
    server = system_pb2_grpc.SystemStub(client.channel).Version(
        pb.VersionRequest(), timeout=client.timeout
    )
    if opts.output == "json":
        print_json({"client": client_info, "server": to_data(server)})
        return 0
    print_fields(
        [
            ("Client", f"pyctr {client_info['version']} (Python {client_info['python']})"),
            ("Server", f"pyctrd {server.version} ({server.python})"),
            ("CRI API", server.cri_api_version),
            ("Native API", server.api_version),
        ]
    )
    return 0


def info(client: Client, opts: argparse.Namespace) -> int:
    resp = system_pb2_grpc.SystemStub(client.channel).Info(pb.InfoRequest(), timeout=client.timeout)
    if opts.output == "json":
        print_json(to_data(resp))
        return 0
    pairs: list[tuple[str, object]] = [
        ("Root", resp.root),
        ("State", resp.state),
        ("Socket", resp.address),
        ("Config file", resp.config_file or "(none, defaults)"),
        ("runc", f"{resp.runc_path or 'NOT FOUND'} {resp.runc_version}".strip()),
        ("Kernel", resp.kernel),
        ("PID", resp.pid),
    ]
    handlers: list[tuple[str, object]] = []
    for f in resp.features:
        text = f"{f.value} {('(' + f.detail + ')') if f.detail else ''}".strip()
        if f.name.startswith("runtime "):  # a runtime handler, then its features
            handlers.append((f.name.removeprefix("runtime "), text))
        else:
            pairs.append((f.name, text))
    print_fields(pairs)
    if handlers:
        print("\nRuntime handlers (usable here? features, and why):")
        print_fields([(f"  {name}", text) for name, text in handlers])
    if opts.verbose:
        print("\n" + resp.config_toml, end="")
    return 0
