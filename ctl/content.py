"""`pyctr content ls|info`: the blobs and downloads in the content store."""

from __future__ import annotations

import argparse

from pyctr.ctl.client import Client
from pyctr.ctl.images import _age, _size
from pyctr.ctl.output import print_fields, print_json, print_table, to_data
from pyctr.proto import images_pb2 as pb
from pyctr.proto import images_pb2_grpc


def register(sub: argparse._SubParsersAction) -> None:
    content = sub.add_parser("content", help="blobs in the content store")
    csub = content.add_subparsers(dest="content_command", metavar="SUBCOMMAND", required=True)
    p = csub.add_parser("ls", aliases=["list"], help="list blobs and downloads in progress")
    p.add_argument("--quiet", "-q", action="store_true", help="print only digests")
    p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)
    p.set_defaults(func=list_content)
    p = csub.add_parser("info", help="one blob's size and age")
    p.add_argument("digest")
    p.set_defaults(func=info)


def list_content(client: Client, opts: argparse.Namespace) -> int:
    resp = images_pb2_grpc.ContentStub(client.channel).List(
        pb.ContentListRequest(), timeout=client.timeout
    )
    if opts.output == "json":
        print_json(to_data(resp))
        return 0
    if opts.quiet:
        for b in resp.blobs:
            print(b.digest)
        return 0
    print_table(
        ["DIGEST", "SIZE", "AGE"],
        [[b.digest, _size(b.size), _age(b.created_at)] for b in resp.blobs],
    )
    if resp.ingests:
        print()
        print_table(
            ["DOWNLOADING", "DONE", "SIZE", "UPDATED"],
            [
                [i.digest or i.ref, _size(i.offset), _size(i.size), _age(i.updated_at)]
                for i in resp.ingests
            ],
        )
    return 0


def info(client: Client, opts: argparse.Namespace) -> int:
    resp = images_pb2_grpc.ContentStub(client.channel).Info(
        pb.ContentInfoRequest(digest=opts.digest), timeout=client.timeout
    )
    if opts.output == "json":
        print_json(to_data(resp.blob))
        return 0
    b = resp.blob
    print_fields([("Digest", b.digest), ("Size", b.size), ("Created", _age(b.created_at))])
    return 0
