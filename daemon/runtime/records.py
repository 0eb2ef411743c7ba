"""Typed records of what the runtime runs: containers and pod sandboxes.

One row per record in the `containers` table (daemon/runtime/store.py). The
columns every kind shares are fields of `Container`; what only one kind has
lives in its subclass and is stored as JSON in the row's `details` column,
tagged with the subclass's `TYPE`:

    Container        the fields the runtime manager needs for any process
    NativeContainer  `pyctr run`: network mode, bind mounts
    CriContainer     CreateContainer: CRI metadata, image spec, status mounts, stop signal
    Sandbox          RunPodSandbox (its process is the pause container)

Rows written before schema version 1 kept all of this in an untyped `extra`
dict; `from_v0` reads that shape. Times are nanoseconds since the epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.runtime.states import PodState, Status, pod_is_ready

log = logging.getLogger("pyctr.records")

# The columns (besides `details`) of the containers table, in order.
COLUMNS = (
    "id", "name", "kind", "sandbox_id", "image", "image_id", "snapshot", "spec", "labels",
    "annotations", "created_at", "status", "pid", "started_at", "finished_at", "exit_code",
    "reason", "message",
)  # fmt: skip
_JSON_COLUMNS = ("spec", "labels", "annotations")


# -- sub-records --------------------------------------------------------------


@dataclass
class ConsoleSize:
    width: int = 0
    height: int = 0


@dataclass
class BindMount:
    """A native container's `--mount`."""

    source: str = ""
    destination: str = ""
    readonly: bool = False


@dataclass
class StatusMount:
    """A CRI mount as asked for (ContainerStatus echoes it; cri.Mount's fields)."""

    container_path: str = ""
    host_path: str = ""
    readonly: bool = False
    propagation: int = 0
    selinux_relabel: bool = False
    recursive_read_only: bool = False
    # An image volume: the image as asked for, its ID, the path inside it.
    image: str = ""
    image_ref: str = ""
    image_sub_path: str = ""


@dataclass
class ContainerMetadata:
    name: str = ""
    attempt: int = 0


@dataclass
class PodMetadata:
    name: str = ""
    uid: str = ""
    namespace: str = ""
    attempt: int = 0


@dataclass
class ImageSpec:
    """The CRI ImageSpec a container was created with."""

    image: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    user_specified_image: str = ""
    runtime_handler: str = ""


@dataclass
class Namespaces:
    """The pod's CRI NamespaceMode per namespace (POD, CONTAINER, NODE)."""

    network: int = 0
    pid: int = 0
    ipc: int = 0


@dataclass
class IdMap:
    """Container IDs [container_id, +size) are host IDs [host_id, +size)."""

    container_id: int = 0
    host_id: int = 0
    size: int = 0

    def to_spec(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}


@dataclass
class UserNamespace:
    """A pod's own user namespace (hostUsers: false): its uid and gid ranges."""

    uids: list[IdMap] = field(default_factory=list)
    gids: list[IdMap] = field(default_factory=list)

    @property
    def root(self) -> tuple[int, int]:
        """The host uid and gid of the pod's root."""
        uid = next(m.host_id for m in self.uids if m.container_id == 0)
        gid = next(m.host_id for m in self.gids if m.container_id == 0)
        return uid, gid


# -- records --------------------------------------------------------------------


@dataclass
class Container:
    """What any record has: the table's columns, and how to run its process."""

    KIND: ClassVar[str] = "container"
    TYPE: ClassVar[str] = ""

    id: str
    name: str
    sandbox_id: str = ""
    image: str = ""
    image_id: str = ""
    snapshot: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    created_at: int = field(default_factory=time.time_ns)
    status: Status = Status.CREATED
    pid: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    # The process's stdio as the shim sets it up, and what happens at exit.
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    log_path: str = ""
    console_size: ConsoleSize | None = None  # the terminal's size before the first resize
    auto_remove: bool = False
    # The runtime handler its process runs with; "" (records older than
    # handlers) is runc.
    runtime: str = ""
    # Set for the sandbox and containers of a pod with its own user namespace:
    # their rootfs and volumes are ID-mapped to it.
    userns: UserNamespace | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # "running" from a caller is Status.RUNNING

    @property
    def kind(self) -> str:
        return self.KIND


@dataclass
class NativeContainer(Container):
    TYPE: ClassVar[str] = "native"

    network: str = ""  # "", "host" or "none"
    mounts: list[BindMount] = field(default_factory=list)


@dataclass
class CriContainer(Container):
    TYPE: ClassVar[str] = "cri"

    metadata: ContainerMetadata = field(default_factory=ContainerMetadata)
    image_spec: ImageSpec = field(default_factory=ImageSpec)
    image_ref: str = ""  # the repo digest (or the image ID if it has none)
    image_name: str = ""  # the tag ContainerStatus reports
    mounts: list[StatusMount] = field(default_factory=list)
    stop_signal: int = 0  # a cri.Signal; 0: the image's, else SIGTERM
    image_stop_signal: str = ""  # the image config's StopSignal


@dataclass
class Sandbox(Container):
    KIND: ClassVar[str] = "sandbox"
    TYPE: ClassVar[str] = "sandbox"

    metadata: PodMetadata = field(default_factory=PodMetadata)
    hostname: str = ""
    log_directory: str = ""
    runtime_handler: str = ""
    namespaces: Namespaces = field(default_factory=Namespaces)
    netns: str = ""  # "" with the host's network
    ips: list[str] = field(default_factory=list)  # once CNI ADD is done
    cgroup_parent: str = ""
    own_cgroup_parent: bool = False  # the request named it (else the daemon's default)
    privileged: bool = False
    state: PodState = PodState.READY
    config: dict[str, Any] = field(default_factory=dict)  # the PodSandboxConfig, as JSON
    ns_inodes: dict[str, int] = field(default_factory=dict)  # the pause process's, at start

    def __post_init__(self) -> None:
        super().__post_init__()
        self.state = PodState(self.state)

    @property
    def ready(self) -> bool:
        return pod_is_ready(self.status, self.state)


RECORD_TYPES: dict[str, type[Container]] = {
    cls.TYPE: cls for cls in (Container, NativeContainer, CriContainer, Sandbox)
}
# Enums stored as their string values.
_ENUMS = (Status, PodState)
R = TypeVar("R", bound=Container)


# -- rows -----------------------------------------------------------------------


def to_row(c: Container) -> dict[str, Any]:
    """The record as the table's columns."""
    row: dict[str, Any] = {}
    for name in COLUMNS:
        value = getattr(c, name)
        row[name] = _dumps(value) if name in _JSON_COLUMNS else value
    details = {"type": c.TYPE}
    for f in dataclasses.fields(c):
        if f.name not in COLUMNS:
            details[f.name] = _plain(getattr(c, f.name))
    row["details"] = _dumps(details)
    row["status"] = str(c.status)
    return row


def from_row(row: Any) -> Container:
    """A record from a row of the current schema."""
    data = dict(row)
    details = json.loads(data.pop("details"))
    cls = RECORD_TYPES.get(details.pop("type", None))
    if cls is None:
        raise InvalidArgument(f"record {data['id'][:12]} has an unknown type")
    return _record(cls, data, details)


def from_v0(row: Any) -> Container:
    """A record from a row written before schema version 1, whose `extra`
    held what is now typed. Keys no version ever wrote are dropped."""
    data = dict(row)
    extra = json.loads(data.pop("extra") or "{}")
    if not isinstance(extra, dict):
        raise InvalidArgument(f"record {data['id'][:12]}: extra is not an object")
    if data["kind"] == "sandbox":
        cls: type[Container] = Sandbox
    elif extra.pop("native", False):
        cls = NativeContainer
    elif data["sandbox_id"]:
        cls = CriContainer
    else:
        cls = Container
    return _record(cls, data, extra)


def _record(cls: type[Container], columns: dict[str, Any], details: dict[str, Any]) -> Container:
    kind = columns.pop("kind")
    if kind != cls.KIND:
        raise InvalidArgument(f"record {columns['id'][:12]}: kind {kind!r} is not {cls.KIND!r}")
    for name in _JSON_COLUMNS:
        columns[name] = json.loads(columns[name])
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(details) - known)
    if unknown:
        log.warning("record %s: dropping unknown fields %s", columns["id"][:12], unknown)
    fields = {**{k: v for k, v in details.items() if k in known}, **columns}
    return build(cls, fields, where=f"record {columns['id'][:12]}")


def build(cls: type[R], data: dict[str, Any], where: str = "") -> R:
    """A dataclass from JSON-shaped data, every field checked against its type
    (a record that does not fit is refused, never half-read)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.init and f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        [hint] = [h for h in options if h is not type(None)]
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where}: {value!r:.80} is not an object")
        return build(hint, value, where)  # type: ignore[arg-type, type-var]
    if origin is list:
        if not isinstance(value, list):
            raise InvalidArgument(f"{where}: {value!r:.80} is not a list")
        [item] = typing.get_args(hint)
        return [_value(item, v, f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where}: {value!r:.80} is not an object")
        _, item = typing.get_args(hint)
        return {k: _value(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, _ENUMS):
        try:
            return hint(value)
        except ValueError:
            raise InvalidArgument(f"{where}: {value!r:.80} is not a {hint.__name__}") from None
    if hint is int and isinstance(value, bool):
        return int(value)
    if hint is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, hint):
        raise InvalidArgument(f"{where}: {value!r:.80} is not a {hint.__name__}")
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, _ENUMS):
        return str(value)
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def copy_record(c: R) -> R:
    """A copy the caller may change (labels, lists, sub-records) without
    touching the original; the spec is shared and must be treated as read-only."""
    out = copy.copy(c)
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if f.name == "spec":
            continue
        if isinstance(value, dict | list):
            setattr(out, f.name, copy.copy(value))
        elif dataclasses.is_dataclass(value):
            setattr(out, f.name, copy.deepcopy(value))
    return out
