"""`pyctr images pull|ls|inspect|rm|tag` and `pyctr gc`."""

from __future__ import annotations

import argparse
import collections
import datetime
import getpass
import json
import sys
import time
from typing import Any

from pyctr.ctl.client import Client, CliError
from pyctr.ctl.output import print_json, print_table, to_data
from pyctr.proto import images_pb2 as pb
from pyctr.proto import images_pb2_grpc


def _output_flag(p: argparse.ArgumentParser) -> None:
    # Also accepted after the subcommand; SUPPRESS keeps the global value otherwise.
    p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction) -> None:
    images = sub.add_parser("images", aliases=["image", "i"], help="pull, list and remove images")
    isub = images.add_subparsers(dest="images_command", metavar="SUBCOMMAND", required=True)

    p = isub.add_parser("pull", help="pull an image from its registry")
    p.add_argument("reference", help="e.g. busybox, registry:5000/app:1, app@sha256:...")
    p.add_argument("--platform", default="", help="os/arch[/variant] (default: this host's)")
    p.add_argument("--user", "-u", default="", help="registry credentials user[:password]")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the image ID")
    p.set_defaults(func=pull)

    p = isub.add_parser("ls", aliases=["list"], help="list images")
    p.add_argument("filter", nargs="?", default="", help="only the image this names")
    p.add_argument("--quiet", "-q", action="store_true", help="print only image IDs")
    _output_flag(p)
    p.set_defaults(func=list_images)

    p = isub.add_parser("inspect", help="an image's record, manifest and config (JSON)")
    p.add_argument("reference")
    p.set_defaults(func=inspect)

    p = isub.add_parser("rm", aliases=["remove"], help="remove images or names")
    p.add_argument("references", nargs="+", help="image IDs (the whole image) or names")
    p.add_argument("--no-gc", action="store_true", help="do not collect garbage afterwards")
    p.set_defaults(func=remove)

    p = isub.add_parser("tag", help="give an image another name")
    p.add_argument("reference")
    p.add_argument("new_name")
    p.set_defaults(func=tag)

    p = sub.add_parser("gc", help="remove unreferenced content and snapshots now")
    _output_flag(p)
    p.set_defaults(func=gc)


def _stub(client: Client) -> images_pb2_grpc.ImagesStub:
    return images_pb2_grpc.ImagesStub(client.channel)


def _auth(user: str) -> pb.ImageAuth | None:
    if not user:
        return None
    name, sep, password = user.partition(":")
    if not sep:
        if not sys.stdin.isatty():
            raise CliError("--user needs user:password when there is no terminal to ask on")
        password = getpass.getpass(f"password for {name}: ")
    return pb.ImageAuth(username=name, password=password)


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def pull(client: Client, opts: argparse.Namespace) -> int:
    req = pb.ImagePullRequest(reference=opts.reference, platform=opts.platform)
    auth = _auth(opts.user)
    if auth is not None:
        req.auth.CopyFrom(auth)
    # A pull can take long; the per-request timeout is about silence, which
    # the progress stream breaks every second.
    stream = _stub(client).Pull(req)
    if opts.quiet:
        final = collections.deque(stream, maxlen=1)  # only the last message matters
        print(final[0].image.id)
        return 0
    last = _pull_live(stream) if sys.stdout.isatty() else _pull_plain(stream)
    print(f"{last.reference}: {last.image.id}")
    return 0


def _pull_plain(stream: Any) -> pb.ImagePullProgress:
    """One line per layer state change: readable in logs and CI output."""
    seen: dict[str, str] = {}
    last = None
    for last in stream:
        for layer in last.layers:
            if seen.get(layer.digest) != layer.state:
                seen[layer.digest] = layer.state
                print(f"{_short(layer.digest)}: {layer.state} {_size(layer.size)}", flush=True)
    assert last is not None
    return last


def _pull_live(stream: Any) -> pb.ImagePullProgress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    last = None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        tasks: dict[str, Any] = {}
        phase = progress.add_task("resolving", total=None)
        for last in stream:
            progress.update(phase, description=f"{last.reference}: {last.phase}")
            for layer in last.layers:
                if layer.digest not in tasks:
                    tasks[layer.digest] = progress.add_task("", total=layer.size)
                progress.update(
                    tasks[layer.digest],
                    completed=layer.done,
                    description=f"{_short(layer.digest)} {layer.state:<11}",
                )
        progress.update(phase, total=1, completed=1)
    assert last is not None
    return last


def _age(ns: int) -> str:
    """How long ago a nanosecond timestamp was ("-" when not known)."""
    if ns <= 0:
        return "-"
    secs = max(0.0, time.time() - ns / 1e9)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if secs >= size:
            return f"{int(secs // size)} {unit} ago"
    return "just now"


def list_images(client: Client, opts: argparse.Namespace) -> int:
    resp = _stub(client).List(pb.ImageListRequest(filter=opts.filter), timeout=client.timeout)
    if opts.output == "json":
        print_json([to_data(i) for i in resp.images])
        return 0
    if opts.quiet:
        for image in resp.images:
            print(image.id)
        return 0
    rows = []
    for image in resp.images:
        names = [tuple(n.rpartition(":")[::2]) for n in image.repo_tags]
        if not names:
            names = sorted({(d.split("@")[0], "<none>") for d in image.repo_digests})
        for repo, tag_ in names or [("<none>", "<none>")]:
            rows.append(
                [repo, tag_, _short(image.id), image.platform, _size(image.size),
                 _age(image.created_at)]
            )  # fmt: skip
    print_table(["REPOSITORY", "TAG", "IMAGE ID", "PLATFORM", "SIZE", "CREATED"], rows)
    return 0


def inspect(client: Client, opts: argparse.Namespace) -> int:
    resp = _stub(client).Get(pb.ImageGetRequest(reference=opts.reference), timeout=client.timeout)
    data = to_data(resp.image)
    data["manifest"] = json.loads(resp.manifest_json)
    data["config"] = json.loads(resp.config_json)
    print_json(data)
    return 0


def remove(client: Client, opts: argparse.Namespace) -> int:
    stub = _stub(client)
    for ref in opts.references:
        resp = stub.Remove(
            pb.ImageRemoveRequest(reference=ref, no_gc=opts.no_gc), timeout=client.timeout
        )
        for image_id in resp.deleted:
            print(f"deleted: {image_id}")
        if not resp.deleted:
            print(f"untagged: {ref}")
    return 0


def tag(client: Client, opts: argparse.Namespace) -> int:
    resp = _stub(client).Tag(
        pb.ImageTagRequest(reference=opts.reference, new_name=opts.new_name),
        timeout=client.timeout,
    )
    print(resp.image.id)
    return 0


def gc(client: Client, opts: argparse.Namespace) -> int:
    resp = images_pb2_grpc.GCStub(client.channel).Collect(
        pb.GCCollectRequest(), timeout=max(client.timeout, 300)
    )
    if opts.output == "json":
        print_json(to_data(resp))
        return 0
    print(
        f"removed {len(resp.blobs_removed)} blobs, {len(resp.ingests_removed)} ingests, "
        f"{len(resp.snapshots_removed)} snapshots; {_size(resp.bytes_freed)} of content freed "
        f"in {datetime.timedelta(seconds=round(resp.duration_seconds, 2))}"
    )
    return 0
