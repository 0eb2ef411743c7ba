"""Hypothesis strategies for any protobuf message, built from its descriptor.

    strategy = messages(cri_pb2.CreateContainerRequest.DESCRIPTOR)
    @given(strategy) def test(req): ...

Field values lean towards what breaks runtimes: path separators, `..`, NUL,
very long strings, huge and negative numbers, NaN, unknown enum values, empty
and deep messages, big maps. Nesting is cut off at `max_depth`.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

HOSTILE_STRINGS = [
    "",
    ".",
    "..",
    "/",
    "../../../../etc/passwd",
    "/etc/shadow",
    "a/b",
    "a\0b",
    "\0",
    "-rf",
    "--help",
    "%s%s%n",
    "${HOME}",
    "$(reboot)",
    "`id`",
    "*",
    "\u202ereversed",
    "\U0001f4a9",
    "\ud7ff\ue000",
    " ",
    "a" * 254,
    "x" * 5000,
    "../" * 400,
    "sha256:" + "0" * 64,
    "sha256:" + "z" * 64,
    "0" * 64,
    "localhost:1/x:y",
    "127.0.0.1:1/nope:1",
    "@sha256:",
    "/proc/self/root",
    "/dev/sda",
    "/sys/kernel",
]

_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.text(max_size=40),
        st.text(alphabet="abc./-_:@0123456789", max_size=80),
    )


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [lo, hi, 0, -1 if lo < 0 else 1, 1, 2**31 - 1 if hi >= 2**31 - 1 else hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(-10, 1000))


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = f.type
    if t in _INTS:
        lo, hi = _INTS[t]
        return _ints(lo, hi).filter(lambda v: lo <= v <= hi)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        specials = [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e300]
        if t == FieldDescriptor.TYPE_FLOAT:
            specials = [math.nan, math.inf, -math.inf, 0.0, -1.0, 3e38]
            return st.one_of(st.sampled_from(specials), st.floats(width=32))
        return st.one_of(st.sampled_from(specials), st.floats())
    if t == FieldDescriptor.TYPE_STRING:
        return strings()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\0" * 70000))
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 2**31 - 1))
    raise TypeError(f"no strategy for field {f.full_name} of type {t}")


def _field(f: FieldDescriptor, depth: int, max_depth: int) -> st.SearchStrategy[Any] | None:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if f.message_type.GetOptions().map_entry:
            key_f, value_f = (
                f.message_type.fields_by_name["key"],
                f.message_type.fields_by_name["value"],
            )
            value = _field(value_f, depth + 1, max_depth)
            if value is None:
                return None
            return st.dictionaries(_scalar(key_f), value, max_size=4)
        if depth >= max_depth:
            return None
        inner = messages(f.message_type, depth + 1, max_depth)
    else:
        inner = _scalar(f)
    if f.is_repeated:
        return st.lists(inner, max_size=4)
    return inner


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            getattr(msg, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def messages(desc: Descriptor, depth: int = 0, max_depth: int = 4) -> st.SearchStrategy[Message]:
    """Messages of type `desc` with a random subset of fields set to hostile values."""
    cls = message_factory.GetMessageClass(desc)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        s = _field(f, depth, max_depth)
        if s is not None:
            optional[f.name] = s
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: _build(cls, kw))
