"""Pod networking through CNI plugins (CNI spec 0.3.x, 0.4.0 and 1.0.0).

`CniManager` picks the network from the CNI config dir, answers whether the
network is ready, and runs the plugins' chain for a pod:

    cni = CniManager(conf_dir, bin_dir, cache_dir=root / "cni")
    ready, why = cni.status()                     # CRI Status: NetworkReady
    net = await cni.setup(pod_id, netns_path, namespace=..., name=..., uid=...,
                          port_mappings=[PortMapping(8080, 30080)])
    net.ips                                       # PodSandboxStatus.network
    await cni.teardown(pod_id, netns_path)        # before removing the netns

Which network, and whether it is ready: pyctr.daemon.pods.cni_config.

The ADD result (and the config and arguments it was made with) is cached in
cache_dir per pod, written *before* the first plugin runs and completed after
the last, so DEL after a daemon restart, a config change or a crash mid-ADD
runs the same chain with the same prevResult. `teardown` of a pod with no
cache entry is a no-op: nothing was ever added for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.daemon.errors import FailedPrecondition, Internal, InvalidArgument
from pyctr.daemon.pods import netns
from pyctr.daemon.pods.cni_config import (
    NAME_RE,
    PLUGIN_RE,
    Network,
    NetworkConfig,
    find_plugin,
    version_tuple,
)

log = logging.getLogger(__name__)

DEFAULT_IFNAME = "eth0"
DEFAULT_TIMEOUT = 60.0
# CNI 1.0's rule for network names; container IDs get the same alphabet.
_PROTOCOLS = ("tcp", "udp", "sctp")
_IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.\-]{1,15}$")


class CniPluginError(Internal):
    """A plugin failed (non-zero exit, bad output, timeout)."""

    def __init__(
        self, plugin: str, command: str, msg: str, *, code: int = 0, details: str = ""
    ) -> None:
        self.plugin = plugin
        self.command = command
        self.msg = msg
        self.cni_code = code
        self.details = details
        text = f"CNI plugin {plugin} failed on {command}: {msg}"
        if details:
            text += f": {details}"
        if code:
            text += f" (code {code})"
        super().__init__(text)


@dataclass(frozen=True)
class PortMapping:
    """One hostPort of the pod, as the portmap plugin's `portMappings` wants it."""

    container_port: int
    host_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_cni(self) -> dict[str, Any]:
        return {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
            "hostIP": self.host_ip,
        }


@dataclass(frozen=True)
class PodNetwork:
    """What one pod got from the network: its IPs (IPv4 first) on `interface`."""

    ips: list[str]
    interface: str
    result: dict[str, Any] = field(repr=False)


def pod_ips(result: dict[str, Any], ifname: str = DEFAULT_IFNAME) -> list[str]:
    """The addresses a CNI result gives the pod's `ifname`, IPv4 first.

    An IP tied by index to a host-side interface (no `sandbox`) or to another
    sandbox interface is not the pod's; an IP with no interface index is.
    """
    interfaces = result.get("interfaces") or []
    v4: list[str] = []
    v6: list[str] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict):
            continue
        idx = entry.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(interfaces):
            iface = interfaces[idx]
            if not isinstance(iface, dict):
                continue
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        try:
            addr = ipaddress.ip_interface(str(entry.get("address", ""))).ip
        except ValueError:
            continue
        (v4 if addr.version == 4 else v6).append(str(addr))
    return v4 + v6


def _check_arg(name: str, value: str) -> str:
    # CNI_ARGS is "K=V;K=V": a value with ';' or '=' would smuggle in other keys.
    if any(c in value for c in ";=\0\n"):
        raise InvalidArgument(f"{name} {value!r} contains a character CNI_ARGS cannot carry")
    return value


class CniManager:
    def __init__(
        self,
        conf_dir: str,
        bin_dir: str,
        cache_dir: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.conf_dir = conf_dir
        # CNI_PATH style: more than one plugin dir may be given, ':'-separated.
        self.bin_dirs = [d for d in bin_dir.split(":") if d]
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.config = NetworkConfig(conf_dir, self.bin_dirs)
        self._locks: dict[str, asyncio.Lock] = {}

    def status(self) -> tuple[bool, str]:
        """(ready, message): cheap, the config is re-read only when it changed."""
        return self.config.status()

    def network(self) -> Network:
        """The usable network, or NetworkNotReady saying why there is none."""
        return self.config.network()

    # -- cache ------------------------------------------------------------

    def _cache_path(self, pod_id: str) -> Path:
        if not NAME_RE.match(pod_id) or len(pod_id) > 128:
            raise InvalidArgument(f"invalid pod sandbox id {pod_id!r}")
        return self.cache_dir / f"{pod_id}.json"

    def _write_cache(self, pod_id: str, entry: dict[str, Any]) -> None:
        path = self._cache_path(pod_id)
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _read_cache(self, pod_id: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._cache_path(pod_id).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("CNI cache for %s unreadable (%s); treating as absent", pod_id, e)
            return None
        return entry if isinstance(entry, dict) and "network" in entry else None

    def _drop_cache(self, pod_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._cache_path(pod_id).unlink()

    def cached_pods(self) -> list[str]:
        """Pods with an ADD on record (for reconciling after a restart)."""
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))

    def pod_network(self, pod_id: str) -> PodNetwork | None:
        """The network a finished ADD gave the pod, from the cache."""
        entry = self._read_cache(pod_id)
        if not entry or not isinstance(entry.get("result"), dict):
            return None
        ifname = entry.get("ifname", DEFAULT_IFNAME)
        return PodNetwork(pod_ips(entry["result"], ifname), ifname, entry["result"])

    # -- the chain --------------------------------------------------------

    async def setup(
        self,
        pod_id: str,
        netns_path: str,
        *,
        namespace: str,
        name: str,
        uid: str,
        port_mappings: Sequence[PortMapping] = (),
        ifname: str = DEFAULT_IFNAME,
    ) -> PodNetwork:
        """ADD the pod to the network. On failure the chain is rolled back with
        DEL before the error is raised; `teardown` afterwards is still safe."""
        net = self.network()
        cache_path = self._cache_path(pod_id)
        if not _IFNAME_RE.match(ifname):
            raise InvalidArgument(f"invalid interface name {ifname!r}")
        cni_args = ";".join(
            [
                "IgnoreUnknown=1",
                f"K8S_POD_NAMESPACE={_check_arg('namespace', namespace)}",
                f"K8S_POD_NAME={_check_arg('name', name)}",
                f"K8S_POD_INFRA_CONTAINER_ID={pod_id}",
                f"K8S_POD_UID={_check_arg('uid', uid)}",
            ]
        )
        runtime_config: dict[str, Any] = {}
        # Mappings without a host port are informational (containerd skips them too).
        maps = [_valid_mapping(m).to_cni() for m in port_mappings if m.host_port > 0]
        if maps:
            runtime_config["portMappings"] = maps
        if not netns.is_netns(netns_path):
            raise FailedPrecondition(f"{netns_path} is not a network namespace")
        async with self._pod_lock(pod_id):
            if cache_path.exists():
                raise FailedPrecondition(f"pod {pod_id} already has a network attachment")
            return await self._add(pod_id, netns_path, net, cni_args, runtime_config, ifname)

    async def _add(
        self,
        pod_id: str,
        netns_path: str,
        net: Network,
        cni_args: str,
        runtime_config: dict[str, Any],
        ifname: str,
    ) -> PodNetwork:
        entry: dict[str, Any] = {
            "network": net.raw,
            "netns": netns_path,
            "ifname": ifname,
            "cniArgs": cni_args,
            "runtimeConfig": runtime_config,
            "result": None,
        }
        self._write_cache(pod_id, entry)
        prev: dict[str, Any] | None = None
        try:
            for plugin in net.plugins:
                prev = await self._exec("ADD", net, plugin, pod_id, netns_path, entry, prev)
            if prev is None:
                raise CniPluginError(str(net.plugins[-1].get("type")), "ADD", "no result")
        except BaseException as e:
            await self._rollback(pod_id, netns_path, entry, e)
            raise
        entry["result"] = prev
        self._write_cache(pod_id, entry)
        ips = pod_ips(prev, ifname)
        log.info("pod %s joined CNI network %s with %s", pod_id, net.name, ips)
        return PodNetwork(ips, ifname, prev)

    async def _rollback(
        self, pod_id: str, netns_path: str, entry: dict[str, Any], cause: BaseException
    ) -> None:
        try:
            await self._delete(pod_id, netns_path, entry)
        except Exception as e:  # the ADD error is the one to report
            log.warning("cleanup after failed CNI ADD of %s failed: %s", pod_id, e)
            cause.add_note(f"cleanup (DEL) also failed: {e}; teardown will retry")
        else:
            self._drop_cache(pod_id)

    async def teardown(self, pod_id: str, netns_path: str = "") -> None:
        """DEL the pod from the network it was ADDed to; idempotent.

        Works when the netns is already gone (plugins get an empty CNI_NETNS)
        and after a restart or config change (the cached chain is used). The
        cache entry is dropped only once every plugin's DEL succeeded.
        """
        async with self._pod_lock(pod_id):
            entry = self._read_cache(pod_id)
            if entry is None:
                return
            await self._delete(pod_id, netns_path or str(entry.get("netns", "")), entry)
            self._drop_cache(pod_id)

    async def check(self, pod_id: str, netns_path: str = "") -> None:
        """CHECK the pod's attachment (0.4.0+, unless disableCheck); raises
        CniPluginError if a plugin finds it broken, a no-op when not applicable.

        Not for routine use with Debian's plugins 1.1.1: their portmap fails
        CHECK for a pod with IPv4-only port mappings (it looks for IPv6 rules).
        """
        async with self._pod_lock(pod_id):
            entry = self._read_cache(pod_id)
            if entry is None or not isinstance(entry.get("result"), dict):
                return
            net = Network.from_conflist(entry["network"], "<cache>")
            if net.disable_check or version_tuple(net.cni_version) < (0, 4, 0):
                return
            path = netns_path or str(entry.get("netns", ""))
            for plugin in net.plugins:
                await self._exec("CHECK", net, plugin, pod_id, path, entry, entry["result"])

    @contextlib.asynccontextmanager
    async def _pod_lock(self, pod_id: str) -> AsyncIterator[None]:
        """One CNI operation per pod at a time: a StopPodSandbox that arrives
        while RunPodSandbox is still adding waits, then deletes what it added."""
        lock = self._locks.setdefault(pod_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(pod_id) is lock:
                del self._locks[pod_id]

    async def _delete(self, pod_id: str, netns_path: str, entry: dict[str, Any]) -> None:
        net = Network.from_conflist(entry["network"], "<cache>")
        # A file that is no longer a namespace (already removed) would make the
        # plugins fail with "not a netns"; an empty CNI_NETNS is the spec's way
        # of saying "the namespace is gone, release what you hold".
        path = netns_path if netns_path and netns.is_netns(netns_path) else ""
        prev = entry.get("result")
        # prevResult on DEL exists from 0.4.0 on; older plugins do not expect it.
        if version_tuple(net.cni_version) < (0, 4, 0) or not isinstance(prev, dict):
            prev = None
        for plugin in reversed(net.plugins):
            await self._exec("DEL", net, plugin, pod_id, path, entry, prev)

    async def _exec(
        self,
        command: str,
        net: Network,
        plugin: dict[str, Any],
        pod_id: str,
        netns_path: str,
        entry: dict[str, Any],
        prev: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        ptype = str(plugin.get("type", ""))
        binary = find_plugin(ptype, self.bin_dirs) if PLUGIN_RE.match(ptype) else None
        if binary is None:
            raise CniPluginError(ptype, command, f"plugin not found in {':'.join(self.bin_dirs)}")
        conf = dict(plugin)
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        if prev is not None:
            conf["prevResult"] = prev
        caps = plugin.get("capabilities")
        if isinstance(caps, dict):
            wanted = {k: v for k, v in entry["runtimeConfig"].items() if caps.get(k) is True}
            if wanted:
                conf["runtimeConfig"] = wanted
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env["PATH"] = _plugin_path(env.get("PATH", ""))
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=pod_id,
            CNI_NETNS=netns_path,
            CNI_IFNAME=str(entry.get("ifname", DEFAULT_IFNAME)),
            CNI_ARGS=str(entry.get("cniArgs", "")),
            CNI_PATH=":".join(self.bin_dirs),
        )
        out, err, rc = await self._run(binary, ptype, command, json.dumps(conf).encode(), env)
        if rc != 0:
            raise _plugin_error(ptype, command, rc, out, err)
        if command != "ADD":
            return None
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise CniPluginError(ptype, command, "result is not a JSON object", details=_tail(out))
        return result

    async def _run(
        self, binary: str, ptype: str, command: str, stdin: bytes, env: dict[str, str]
    ) -> tuple[bytes, bytes, int]:
        proc = await asyncio.create_subprocess_exec(
            binary,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd="/",
            # Its own process group, so a timeout also ends what it spawned
            # (bridge runs host-local, portmap runs iptables).
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except BaseException as e:
            # Timed out or cancelled: never leave a plugin running unowned.
            if proc.returncode is None:
                # Not reaped yet, so the group id is still the one we made.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())
            if isinstance(e, TimeoutError):
                raise CniPluginError(ptype, command, f"timed out after {self.timeout:g}s") from None
            raise
        assert proc.returncode is not None
        return out, err, proc.returncode


def _plugin_path(path: str) -> str:
    # Plugins exec iptables, ip and friends: make sure the sbin dirs are there
    # even when the daemon was started with a user's PATH.
    parts = [p for p in path.split(":") if p]
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if d not in parts:
            parts.append(d)
    return ":".join(parts)


def _tail(data: bytes, limit: int = 400) -> str:
    text = data.decode(errors="replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _plugin_error(ptype: str, command: str, rc: int, out: bytes, err: bytes) -> CniPluginError:
    try:
        body = json.loads(out)
    except ValueError:
        body = None
    if isinstance(body, dict) and ("msg" in body or "code" in body):
        code = body.get("code")
        return CniPluginError(
            ptype,
            command,
            str(body.get("msg") or "error"),
            code=code if isinstance(code, int) else 0,
            details=str(body.get("details") or ""),
        )
    detail = _tail(err) or _tail(out) or "no output"
    return CniPluginError(ptype, command, f"exited with status {rc}", details=detail)


def _valid_mapping(m: PortMapping) -> PortMapping:
    if not 0 < m.host_port < 65536 or not 0 < m.container_port < 65536:
        raise InvalidArgument(f"port mapping {m.host_port}->{m.container_port} out of range")
    protocol = m.protocol.lower()
    if protocol not in _PROTOCOLS:
        raise InvalidArgument(f"port mapping protocol {m.protocol!r} not supported")
    if m.host_ip:
        try:
            ipaddress.ip_address(m.host_ip)
        except ValueError:
            raise InvalidArgument(f"port mapping hostIP {m.host_ip!r} is not an IP") from None
    return PortMapping(m.container_port, m.host_port, protocol, m.host_ip)
