"""containerd's CRI, driven like pyctr's: the same pod and container, the same calls.

`containerd.cri_pod_container` runs a private containerd with its CRI plugin
on (Debian's 1.6), the pause and small images from our registry (a plain-HTTP
mirror), and times RunPodSandbox + CreateContainer + StartContainer with the
same client, pod config (node network, pod IPC, a PID namespace per container)
and command as `start.cri_pod_container`. `pyctr_ratio` = pyctr's total /
containerd's, both from this run.
"""

from __future__ import annotations

from benchmarks.containerd import Containerd
from benchmarks.core import Metrics, NotAvailable, Samples, measurement, metric, ratio
from benchmarks.env import BenchEnv


class ContainerdCri(Containerd):
    def __init__(self, env: BenchEnv, registry_host: str, sandbox_image: str) -> None:
        super().__init__(env)
        (self.dir / "net.d").mkdir()
        text = self.config.read_text().replace('"io.containerd.grpc.v1.cri", ', "")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text += (
            f"[{cri}]\n"
            f'  sandbox_image = "{sandbox_image}"\n'
            # Root here lacks CAP_SYS_RESOURCE: no negative oom_score_adj (pause wants -998).
            "  restrict_oom_score_adj = true\n"
            "  disable_apparmor = true\n"
            f"[{cri}.cni]\n"
            '  bin_dir = "/usr/lib/cni"\n'
            f'  conf_dir = "{self.dir / "net.d"}"\n'
            f'[{cri}.registry.mirrors."{registry_host}"]\n'
            f'  endpoint = ["http://{registry_host}"]\n'
        )
        self.config.write_text(text)


@measurement("containerd", "cri_pod_container")
def cri_pod_container(env: BenchEnv) -> Metrics:
    """containerd's CRI: RunPodSandbox + CreateContainer + StartContainer; vs pyctr's."""
    from benchmarks.cri import Cri

    ref, _ = env.image("small")
    pause, _ = env.image("pause")
    ctd = ContainerdCri(env, env.registry().host, pause).start()
    client = Cri(ctd.address, env.path("ctdlogs"), env.cgroup_root)
    samples = Samples()
    try:
        try:
            client.pull(ref)
            client.pull(pause)
        except Exception as e:
            raise NotAvailable(f"containerd's CRI cannot pull from the bench registry: {e}") from e
        for i in range(env.options.runs + 1):
            pod = client.pod_config(f"ctd{i}")
            # What a kubelet sends for a node-network pod: no hostname
            # (containerd 1.6 would set it, and runc refuses without a UTS ns).
            pod.hostname = ""
            phases = client.time_pod_start(pod, ref)
            if i:  # the first run warms caches
                samples.add(**phases)
    finally:
        client.remove_everything()
        client.close()
        ctd.stop()
    out = samples.ms()
    runc_ms = metric(env, "runc.run_detached", "start_median_ms")
    out["vs_runc_ratio"] = ratio(out["total_median_ms"], runc_ms)
    mine = metric(env, "start.cri_pod_container", "total_median_ms")
    out["pyctr_total_median_ms"] = mine
    out["pyctr_ratio"] = ratio(mine, out["total_median_ms"])
    return out
