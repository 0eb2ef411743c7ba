"""pyctr: the debug client of pyctrd.

Each subcommand module has `register(subparsers)`; its functions take
(client, opts) and return the exit code. Errors become one line on stderr and
an exit code from `pyctr.ctl.client`.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from pyctr.ctl import (
    completion,
    containers,
    content,
    doctor,
    events,
    images,
    nri,
    pods,
    run,
    snapshots,
    system,
    top,
)  # fmt: skip
from pyctr.ctl.client import Client, CliError, resolve_address, rpc_error
from pyctr.daemon.version import VERSION

# Subcommand modules, one line each.
COMMANDS = [
    system,
    doctor,
    completion,
    images,
    content,
    snapshots,
    run,
    containers,
    pods,
    top,
    events,
    nri,
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyctr", description="Inspect and drive pyctrd.")
    p.add_argument("--version", action="version", version=f"pyctr {VERSION}")
    p.add_argument(
        "--address", "-a", help="pyctrd socket (env PYCTR_ADDRESS; default /run/pyctr/pyctr.sock)"
    )
    p.add_argument(
        "--output", "-o", choices=["table", "json"], default="table", help="output format"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--verbose", "-v", action="store_true", help="more detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    client = Client(resolve_address(opts.address), timeout=opts.timeout)
    try:
        return int(opts.func(client, opts) or 0)
    except CliError as e:
        print(f"pyctr: {e}", file=sys.stderr)
        return e.code
    except grpc.RpcError as e:
        err = rpc_error(e, client.address)
        print(f"pyctr: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
