"""`pyctr events`: the daemon's lifecycle events as they happen.

One line per event: `<time> <topic> <subject> <data as JSON>`, or with
`-o json` one JSON object per line. With --verbose, "listening" on stderr
says when the subscription is in place (scripts can start acting then).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pyctr.ctl.client import Client
from pyctr.proto import containers_pb2 as pb
from pyctr.proto import containers_pb2_grpc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="print lifecycle events as they happen")
    p.add_argument("--filter", "-f", action="append", default=[], metavar="TOPIC",
                   help="only topics starting with TOPIC, e.g. /tasks/ (repeatable)")  # fmt: skip
    p.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)
    p.set_defaults(func=events)


def _time(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def events(client: Client, opts: argparse.Namespace) -> int:
    stub = containers_pb2_grpc.EventsStub(client.channel)
    dropped = 0
    for env in stub.Subscribe(pb.EventsSubscribeRequest(topics=opts.filter)):
        if not env.topic:
            if opts.verbose:
                print("pyctr: listening for events", file=sys.stderr, flush=True)
            continue
        if env.dropped > dropped:
            print(f"pyctr: {env.dropped - dropped} events were dropped", file=sys.stderr)
            dropped = env.dropped
        data = json.loads(env.data_json or "{}")
        if opts.output == "json":
            record = {"timestamp": env.timestamp, "topic": env.topic, "subject": env.subject}
            print(json.dumps({**record, "data": data}), flush=True)
        else:
            text = json.dumps(data, separators=(",", ":"))
            print(f"{_time(env.timestamp)} {env.topic} {env.subject} {text}", flush=True)
    return 0
