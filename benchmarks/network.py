"""Pods with their own network: CNI ADD (bridge, host-local, portmap) on the start path.

The other start measurements use the node's network, as their baselines
(bare runc, `ctr run`) set up none; most of a kubelet's pods do have one.
Here RunPodSandbox also makes a network namespace and runs the CNI chain,
then CreateContainer and StartContainer as usual, against `runc run -d`.

Everything networked lives in a private "host" network namespace (the daemon,
a registry of its own, the bridge, portmap's iptables rules), so the machine's
network is never touched, as in tests/cri.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from typing import Any

from benchmarks.core import Metrics, NotAvailable, Samples, measurement, metric, ratio
from benchmarks.env import BenchEnv

CNI_BIN = "/usr/lib/cni"


def conflist(name: str, bridge: str, subnet: str, data_dir: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


@contextlib.contextmanager
def networked_daemon(env: BenchEnv, daemon_cls: Any = None) -> Iterator[tuple[Any, Any]]:
    """(daemon, Cri client) in a private host netns with a CNI bridge network."""
    if not os.path.isfile(f"{CNI_BIN}/bridge"):
        raise NotAvailable(f"CNI plugins are not installed in {CNI_BIN}")
    from benchmarks import imagegen
    from benchmarks.cri import Cri
    from pyctr.daemon.pods import netns
    from tests.support.daemon import PyctrDaemon, dump_toml
    from tests.support.images import push
    from tests.support.registry import Registry

    base = env.path("net")
    host_ns = netns.create(base / "host.netns")
    registry = None
    client = None
    try:
        with netns.entered(host_ns):
            registry = Registry(base / "reg")
            refs = {}
            for name in ("small", "pause"):
                layout, _ = imagegen.layout(imagegen.SPECS[name])
                refs[name] = f"{registry.host}/bench/{name}:{imagegen.TAG}"
                push(layout, imagegen.TAG, refs[name])
            tag = f"{os.getpid() % 10000}{random.randrange(1000):03d}"
            subnet = f"10.{random.randrange(100, 250)}.{random.randrange(256)}.0/24"
            (base / "net.d").mkdir()
            conf = conflist(f"bench-{tag}", f"pyb{tag}"[:15], subnet, str(base / "ipam"))
            (base / "net.d" / "10-bench.conflist").write_text(json.dumps(conf))
            config = {
                "cri": {
                    "sandbox_image": refs["pause"],
                    "cni": {"conf_dir": str(base / "net.d"), "bin_dir": CNI_BIN},
                }
            }
            cls = daemon_cls or PyctrDaemon
            daemon = cls(env.path("dn"), dump_toml(config), ["--log-level", "info"])
            env._daemons.append(daemon)  # stopped and swept by env.close() whatever happens
            daemon.start()
        client = Cri(daemon.address, env.path("logs"), env.cgroup_root)
        client.pull(refs["small"])
        client.image_ref = refs["small"]  # type: ignore[attr-defined]
        yield daemon, client
    finally:
        if client is not None:
            client.remove_everything()
            client.close()
        if registry is not None:
            registry.stop()
        # The daemon (and the pods' netns) go with env.close(); the host netns
        # only once nothing uses it.
        with contextlib.suppress(OSError):
            netns.remove(host_ns)


def pod_with_network(client: Any, name: str) -> Any:
    from pyctr.proto import cri_pb2 as cri

    pod = client.pod_config(name)
    pod.linux.security_context.namespace_options.network = cri.NamespaceMode.POD
    return pod


@measurement("start", "cri_pod_network")
def cri_pod_network(env: BenchEnv) -> Metrics:
    """RunPodSandbox with CNI (bridge+host-local+portmap) + CreateContainer + StartContainer."""
    samples = Samples()
    with networked_daemon(env) as (_, client):
        ref = client.image_ref
        for i in range(env.options.runs + 1):
            phases = client.time_pod_start(pod_with_network(client, f"net{i}"), ref)
            if i:
                samples.add(**phases)
    out = samples.ms()
    runc_ms = metric(env, "runc.run_detached", "start_median_ms")
    out["vs_runc_ratio"] = ratio(out["total_median_ms"], runc_ms)
    with contextlib.suppress(NotAvailable):
        host = metric(env, "start.cri_pod_container", "pod_median_ms")
        out["pod_vs_host_network_ratio"] = ratio(out["pod_median_ms"], host)
    return out
