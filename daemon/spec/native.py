"""What a native (`pyctr run`) container is made of: its record and its spec.

The request is checked here before anything is created (names, env, mounts,
paths), so bad input changes nothing. The spec comes from the image config
(Entrypoint/Cmd, Env, WorkingDir, User resolved inside the image's own
/etc/passwd) overridden by the request, with the default mounts and
capabilities of `oci_spec`. Isolation: new pid, ipc, uts and mount
namespaces, and a network namespace with only loopback, unless the request
asks for the host's network (`--net host`).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyctr.daemon.cgroups import Cgroups
from pyctr.daemon.errors import InvalidArgument
from pyctr.daemon.runtime.manager import SpecBuilder
from pyctr.daemon.runtime.records import BindMount, ConsoleSize, Container, NativeContainer
from pyctr.daemon.runtime.store import check_name, new_id
from pyctr.daemon.spec.oci import Mount, SpecOptions, merge_env, process_args
from pyctr.daemon.spec.rootfs import UnknownUser, resolve_user
from pyctr.proto import containers_pb2 as pb

NETWORKS = ("", "host", "none")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
MAX_ARGS_BYTES = 256 * 1024
MAX_LABELS_BYTES = 64 * 1024
MAX_MOUNTS = 64

# For generated names ("calm_heron"): short, friendly, no offensive pairs.
ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "clever", "cosy", "crisp", "deft", "eager", "fair",
    "fond", "gentle", "glad", "happy", "hardy", "jolly", "keen", "kind", "lively", "lucid",
    "merry", "mellow", "neat", "nimble", "plucky", "proud", "quick", "quiet", "rapid", "shy",
    "sleepy", "snug", "spry", "steady", "sunny", "swift", "tidy", "vivid", "warm", "witty",
)  # fmt: skip
NOUNS = (
    "alder", "badger", "beacon", "birch", "bison", "cedar", "comet", "crane", "delta", "ember",
    "falcon", "fern", "fjord", "gecko", "glacier", "harbor", "hazel", "heron", "ibis", "lagoon",
    "lark", "lynx", "maple", "marten", "meadow", "nebula", "otter", "pebble", "pine", "quartz",
    "raven", "reef", "river", "robin", "sparrow", "spruce", "summit", "tundra", "walrus", "willow",
)  # fmt: skip


def generate_name(taken: Callable[[str], bool], cid: str) -> str:
    """adjective_noun, like docker; `pyctr-<id12>` if a few tries all collide."""
    for _ in range(8):
        name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}"
        if not taken(name):
            return name
    return f"pyctr-{cid[:12]}"


def _check_text(value: str, what: str) -> str:
    if "\0" in value:
        raise InvalidArgument(f"{what} contains a NUL byte")
    return value


def _rooted(path: str) -> str:
    """An absolute, normalised path (a leading "//" would survive normpath)."""
    return os.path.normpath("/" + path.lstrip("/"))


def _check_abs(path: str, what: str) -> str:
    _check_text(path, what)
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} {path[:200]!r} must be an absolute path")
    if len(path) > 4096:
        raise InvalidArgument(f"{what} is longer than 4096 bytes")
    return _rooted(path)


def parse_env(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = _check_text(item, "env").partition("=")
        if not sep or not key:
            raise InvalidArgument(f"env {item[:80]!r} must be KEY=VALUE")
        out.append((key, value))
    return out


def check_request(req: pb.ContainerCreateRequest) -> None:
    """Everything that can be refused before the image or rootfs is touched."""
    if not req.image:
        raise InvalidArgument("create: image is empty")
    _check_text(req.image, "image")
    if req.name:
        check_name(req.name)
    size = 0
    for arg in [*req.command, *req.args]:
        _check_text(arg, "argument")
        size += len(arg) + 1
    if size > MAX_ARGS_BYTES:
        raise InvalidArgument(f"arguments are larger than {MAX_ARGS_BYTES} bytes")
    parse_env(list(req.env))
    if req.workdir:
        _check_abs(req.workdir, "workdir")
    _check_text(req.user, "user")
    if req.network not in NETWORKS:
        raise InvalidArgument(f"network {req.network[:40]!r}: use 'host', 'none' or nothing")
    if req.hostname and not HOSTNAME_RE.match(req.hostname):
        raise InvalidArgument(f"hostname {req.hostname[:80]!r} is not a valid host name")
    if len(req.mounts) > MAX_MOUNTS:
        raise InvalidArgument(f"at most {MAX_MOUNTS} mounts")
    for m in req.mounts:
        source = _check_abs(m.source, "mount source")
        dest = _check_abs(m.destination, "mount destination")
        if dest == "/":
            raise InvalidArgument("a mount cannot replace the root filesystem")
        if not os.path.exists(source):
            raise InvalidArgument(f"mount source {source!r} does not exist")
    if sum(len(k) + len(v) for k, v in req.labels.items()) > MAX_LABELS_BYTES:
        raise InvalidArgument(f"labels are larger than {MAX_LABELS_BYTES} bytes")


def native_record(
    req: pb.ContainerCreateRequest, name_taken: Callable[[str], bool]
) -> NativeContainer:
    """The record of a request that passed check_request (not stored yet)."""
    cid = new_id()
    return NativeContainer(
        id=cid,
        name=req.name or generate_name(name_taken, cid),
        image=req.image,
        labels=dict(req.labels),
        tty=req.tty,
        stdin=req.stdin,
        auto_remove=req.auto_remove,
        network=req.network,
        console_size=(
            ConsoleSize(width=req.size.width, height=req.size.height)
            if req.tty and req.HasField("size")
            else None
        ),
        mounts=[
            BindMount(source=m.source, destination=m.destination, readonly=m.readonly)
            for m in req.mounts
        ],
    )


def _host_network_mounts() -> list[Mount]:
    """The host's resolver and hosts files, read-only, as docker gives --net host."""
    return [
        Mount(path, path, "bind", ["rbind", "ro", "nosuid", "nodev", "noexec"])
        for path in ("/etc/resolv.conf", "/etc/hosts")
        if os.path.isfile(path)
    ]


def spec_builder(
    req: pb.ContainerCreateRequest,
    record: Container,
    config: Any,
    logs_dir: Path,
    cgroups: Cgroups,
) -> SpecBuilder:
    """The SpecBuilder the runtime manager calls with the mounted rootfs."""

    def build(rootfs: Path, image: dict[str, Any]) -> SpecOptions:
        args = process_args(image, list(req.command), list(req.args))
        if not args:
            raise InvalidArgument("no command: the image has neither Entrypoint nor Cmd")
        user_spec = req.user or str(image.get("User") or "")
        try:
            user = resolve_user(rootfs, user_spec)
        except UnknownUser as e:
            raise InvalidArgument(str(e)) from None  # it names the user or group
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"user {user_spec!r}: unreadable image users: {e}") from None
        extra_env = parse_env(list(req.env))
        if not any(k == "HOME" for k, _ in extra_env) and not any(
            str(e).startswith("HOME=") for e in image.get("Env") or []
        ):
            extra_env.insert(0, ("HOME", user.home))
        namespaces = [(n, "") for n in ("pid", "ipc", "uts", "mount")]
        mounts = [
            Mount(
                _rooted(m.destination),
                _rooted(m.source),
                "bind",
                ["rbind", "ro" if m.readonly else "rw"],
            )
            for m in req.mounts
        ]
        hostname = req.hostname or record.id[:12]
        if req.network == "host":
            hostname = req.hostname or socket.gethostname()
            dests = {m.destination for m in mounts}
            mounts += [m for m in _host_network_mounts() if m.destination not in dests]
        else:
            namespaces.append(("network", ""))
        # The ID is final now: the log file and cgroup are named after it.
        record.log_path = str(logs_dir / f"{record.id}.log")
        return SpecOptions(
            args=args,
            env=merge_env(list(image.get("Env") or []), extra_env),
            user=user,
            cwd=_rooted(req.workdir or str(image.get("WorkingDir") or "/")),
            terminal=req.tty,
            hostname=hostname,
            readonly_rootfs=req.readonly_rootfs,
            namespaces=namespaces,
            mounts=mounts,
            cgroups_path=cgroups.cgroups_path(cgroups.default_parent, record.id),
            restrict_oom_score_adj=config.cri.restrict_oom_score_adj,
            annotations={"io.pyctr.container.name": record.name},
        )

    return build
