"""pyctrd's configuration: one dataclass tree, loaded from TOML.

Defaults and their explanations live here and nowhere else: `pyctrd config
default` renders this tree as commented TOML. Unknown keys and wrong types are
refused with the key's dotted name, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.daemon.errors import InvalidArgument

DEFAULT_CONFIG_PATH = Path("/etc/pyctr/config.toml")


def _opt(default: Any, doc: str) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def _section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass
class RegistryHost:
    mirrors: list[str] = _opt([], "mirror endpoints tried in order, then the host itself")
    insecure: bool = _opt(False, "talk plain HTTP to this host")
    skip_verify: bool = _opt(False, "accept any TLS certificate")
    ca_file: str = _opt("", "PEM bundle of CAs to trust for this host")
    cert_file: str = _opt("", "client certificate (PEM) for mutual TLS")
    key_file: str = _opt("", "client key (PEM) for mutual TLS")
    username: str = _opt("", "user for basic or token auth")
    password: str = _opt("", "password for basic or token auth")
    auth: str = _opt("", "base64 of user:password, instead of username/password")


_REGISTRY_HOSTS_DOC = "settings for one registry host (host or host:port); add one table per host"


@dataclass
class Registry:
    max_concurrent_downloads: int = _opt(3, "layers downloaded at once per pull")
    timeout: float = _opt(30.0, "seconds without progress before a registry request fails")
    hosts: dict[str, RegistryHost] = _opt({}, "per-host settings, see below")


@dataclass
class Snapshotter:
    backend: str = _opt("overlayfs", 'snapshotter: "overlayfs" or "native" (copying)')
    allow_devices: bool = _opt(True, "let image layers create device nodes")
    max_parallel_unpack: int = _opt(3, "layers of one image extracted at once (overlayfs)")


@dataclass
class Cni:
    conf_dir: str = _opt("/etc/cni/net.d", "where CNI network configs are read")
    bin_dir: str = _opt("/usr/lib/cni", "where CNI plugins are found")


@dataclass
class Streaming:
    address: str = _opt("127.0.0.1", "address the exec/attach/port-forward server binds")
    port: int = _opt(0, "port of the streaming server; 0 picks a free one")
    token_ttl: float = _opt(60.0, "seconds a streaming URL stays valid")
    stream_creation_timeout: float = _opt(
        30.0, "seconds a client has, once connected, to open all its streams"
    )
    idle_timeout: float = _opt(
        14400.0, "seconds a streaming connection may stay idle before it is closed (0: never)"
    )


@dataclass
class RuntimeHandler:
    binary: str = _opt("", "the OCI runtime binary (name on PATH or absolute path)")
    root: str = _opt("", 'its state dir (--root); "": <state>/<handler name>')


_RUNTIMES_DOC = (
    "an OCI runtime handler (a RuntimeClass's handler); runc (runtime.runc) and crun, "
    "when installed, are built in; add one table per extra handler"
)


@dataclass
class Cri:
    sandbox_image: str = _opt("registry.k8s.io/pause:3.9", "image of each pod's infra container")
    cgroup_driver: str = _opt(
        "auto",
        'cgroup driver, the kubelet\'s too: "systemd", "cgroupfs" or "auto" '
        "(systemd when systemd is PID 1)",
    )
    restrict_oom_score_adj: bool = _opt(
        True, "never give a container an oom_score_adj below the daemon's own"
    )
    default_runtime: str = _opt(
        "runc", 'the handler of pods whose runtime_handler is "" (and of native containers)'
    )
    runtimes: dict[str, RuntimeHandler] = _opt({}, "runtime handlers, see below")
    cni: Cni = _section(Cni, "container networking")
    streaming: Streaming = _section(Streaming, "the streaming server")


@dataclass
class Runtime:
    runc: str = _opt("runc", "the OCI runtime binary (name on PATH or absolute path)")
    shim_debug: bool = _opt(False, "shims log at debug level into their state dir")
    shim_zygote: bool = _opt(
        True, "fork shims from one pre-loaded process (faster start, shared memory)"
    )
    cgroup_parent: str = _opt(
        "",
        "cgroup for containers outside pods and pods without one: a path for cgroupfs, "
        'a slice for systemd ("": /pyctr or pyctr.slice)',
    )


@dataclass
class Metrics:
    address: str = _opt(
        "", "host:port of the Prometheus endpoint (GET /metrics); empty: off; no auth, so loopback"
    )


@dataclass
class Nri:
    enable: bool = _opt(True, "host NRI plugins (node resource interface), as containerd 2.x does")
    socket_path: str = _opt("/var/run/nri/nri.sock", "the socket NRI plugins connect to")
    disable_connections: bool = _opt(
        False, "no socket: only the plugins started from plugin_path take part"
    )
    plugin_path: str = _opt(
        "/opt/nri/plugins", "plugins started with the daemon: executables named <idx>-<name>"
    )
    plugin_config_path: str = _opt(
        "/etc/nri/conf.d", "their configs: <idx>-<name>.conf or <name>.conf, handed to Configure"
    )
    plugin_registration_timeout: float = _opt(5.0, "seconds a plugin has to register")
    plugin_request_timeout: float = _opt(
        2.0, "seconds a plugin has to answer one event; then it is disconnected"
    )
    required_plugins: list[str] = _opt(
        [], "plugins (<idx>-<name> or <name>) without which pods and containers are refused"
    )


@dataclass
class Config:
    root: str = _opt("/var/lib/pyctr", "persistent state: content, snapshots, metadata")
    state: str = _opt("/run/pyctr", "runtime state: sockets, bundles, exit records")
    address: str = _opt("/run/pyctr/pyctr.sock", "the gRPC socket")
    socket_group: str = _opt("", "group allowed on the socket besides root (mode 0660)")
    log_level: str = _opt("info", "debug, info, warning or error")
    registry: Registry = _section(Registry, "image registries")
    snapshotter: Snapshotter = _section(Snapshotter, "root filesystems from image layers")
    runtime: Runtime = _section(Runtime, "container runtime")
    cri: Cri = _section(Cri, "Kubernetes CRI")
    metrics: Metrics = _section(Metrics, "the daemon's own Prometheus metrics")
    nri: Nri = _section(Nri, "NRI plugins")

    @property
    def root_dir(self) -> Path:
        return Path(self.root)

    @property
    def state_dir(self) -> Path:
        return Path(self.state)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise InvalidArgument(f"config: unknown key {name!r}")
        kwargs[key] = _convert(hints[key], value, name)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InvalidArgument(f"config: {name!r} must be a table")
        return _build(hint, value, name)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is dict:
        _, vtype = typing.get_args(hint)
        if not isinstance(value, dict):
            raise InvalidArgument(f"config: {name!r} must be a table")
        return {k: _convert(vtype, v, f"{name}.{k}") for k, v in value.items()}
    if origin is list:
        (itype,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise InvalidArgument(f"config: {name!r} must be a list")
        return [_convert(itype, v, name) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise InvalidArgument(f"config: {name!r} must be {hint.__name__}, not {value!r}")
    return value


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file (missing default path = all defaults), then apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            if path != DEFAULT_CONFIG_PATH:
                raise InvalidArgument(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(f"config file {path}: {e}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    config = _build(Config, data, "")
    _check_choices(config)
    return config


def from_toml(text: str) -> Config:
    """A config from TOML text (the daemon's own `render`, as `pyctr info` gets it)."""
    try:
        config = _build(Config, tomllib.loads(text), "")
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"config: {e}") from None
    _check_choices(config)
    return config


# Keys whose value must be one of a few words; checked at load, so a daemon
# never starts with a setting it would only trip over at the first pod.
_CHOICES = {
    "log_level": ("debug", "info", "warning", "error"),
    "snapshotter.backend": ("overlayfs", "native"),
    "cri.cgroup_driver": ("auto", "systemd", "cgroupfs"),
}


# A RuntimeClass's handler is a DNS label.
_HANDLER_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _check_choices(config: Config) -> None:
    for dotted, allowed in _CHOICES.items():
        value: Any = config
        for part in dotted.split("."):
            value = getattr(value, part)
        if value not in allowed:
            words = " or ".join(f'"{a}"' for a in allowed)
            raise InvalidArgument(f"config: {dotted!r} must be {words}, not {value!r}")
    if config.snapshotter.max_parallel_unpack < 1:
        raise InvalidArgument("config: 'snapshotter.max_parallel_unpack' must be at least 1")
    for name in [config.cri.default_runtime, *config.cri.runtimes]:
        if not _HANDLER_RE.match(name):
            raise InvalidArgument(f"config: runtime handler name {name!r} is not a DNS label")
    for name in ("root", "state", "address"):
        if not getattr(config, name).startswith("/"):
            raise InvalidArgument(f"config: {name!r} must be an absolute path")


def toml_value(value: Any) -> str:
    """A TOML value: bool, number, string or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    return repr(value)


def dump_toml(data: typing.Mapping[str, Any], table: str = "") -> str:
    """Plain nested dicts as TOML (no comments): what tests and tools write
    as a config; `render` is the commented form of a whole Config."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {toml_value(value)}")
    out = (f"[{table}]\n" if table and lines else "") + "".join(line + "\n" for line in lines)
    for key, value in tables:
        out += dump_toml(value, f"{table}.{json.dumps(key)}" if table else json.dumps(key))
    return out


SECRET_KEYS = frozenset({"password", "auth"})
# Tables of tables, rendered one table per entry (a commented example when empty).
_TABLES: dict[str, tuple[str, type, str]] = {
    "hosts": ("myregistry:5000", RegistryHost, _REGISTRY_HOSTS_DOC),
    "runtimes": ("youki", RuntimeHandler, _RUNTIMES_DOC),
}


def render(config: Config, *, redact: bool = True) -> str:
    """`config` as TOML, every key with its comment; secrets redacted."""
    lines = ["# pyctrd configuration. Save as /etc/pyctr/config.toml and edit.", ""]

    def emit(obj: Any, table: str) -> None:
        sections = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                sections.append((f, value))
                continue
            if f.name in _TABLES:
                continue
            if redact and f.name in SECRET_KEYS and value:
                value = "<redacted>"
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {toml_value(value)}")
        for key, (example, cls, doc) in _TABLES.items():
            if not hasattr(obj, key):
                continue
            entries = getattr(obj, key) or {example: None}
            for name, settings in entries.items():
                prefix = "" if settings else "# "
                lines.extend(["", f"# {doc}", f'{prefix}[{table}.{key}."{name}"]'])
                shown = settings or cls()
                for hf in dataclasses.fields(cls):
                    value = getattr(shown, hf.name)
                    if redact and hf.name in SECRET_KEYS and value:
                        value = "<redacted>"
                    lines.append(f"{prefix}{hf.name} = {toml_value(value)}  # {hf.metadata['doc']}")
        for f, value in sections:
            name = f"{table}.{f.name}" if table else f.name
            lines.extend(["", f"# {f.metadata['doc']}", f"[{name}]"])
            emit(value, name)

    emit(config, "")
    return "\n".join(lines) + "\n"


def render_default() -> str:
    """The full default config as TOML (`pyctrd config default`)."""
    return render(Config())
