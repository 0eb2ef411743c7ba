"""Printing results: `-o table` (default, for people) or `-o json` (for scripts)."""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def to_data(msg: Message) -> dict[str, Any]:
    """A message as plain JSON-able data, field names as in the .proto. Each
    nanosecond timestamp (`*_at`, a string as proto3 JSON has int64) gets an
    RFC 3339 twin, `<name>_rfc3339`, for people and jq."""
    data = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _add_rfc3339(data)
    return data


def rfc3339(ns: int) -> str:
    """UTC with nanoseconds, as Kubernetes and containerd print times."""
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(secs, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def _add_rfc3339(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _add_rfc3339(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        if key.endswith("_at") and isinstance(value, str) and value.isdigit() and int(value):
            node[f"{key}_rfc3339"] = rfc3339(int(value))
        else:
            _add_rfc3339(value)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain aligned columns, like `docker ps`; cheap and pipe-friendly."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        line = "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        sys.stdout.write(f"{key + ':':<{width + 1}} {value}\n")
