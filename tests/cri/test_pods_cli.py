"""`pyctr pods` and `pyctr ps -A`: the kubelet's pods and containers from the one client."""

from __future__ import annotations

import json
import time

import pytest

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import BB, CriEnv, Kubelet
from tests.support.timing import scaled

pytestmark = pytest.mark.root


def test_pods_ls_ps_inspect_logs_stats(cri_env: CriEnv, kube: Kubelet) -> None:
    ctl = cri_env.daemon.ctl
    web = kube.pod_config("web", labels={"app": "web"})
    web_id = kube.run_pod(web)
    job = kube.pod_config("job", labels={"app": "job"})
    job.metadata.namespace = "batch"
    job_id = kube.run_pod(job)
    script = "echo out-1; echo err-1 >&2; printf partial; sleep 0.3; echo ' done'; sleep 600"
    cid = kube.run(web_id, web, "server", [BB, "sh", "-c", script])
    done = kube.run(job_id, job, "once", [BB, "true"])
    kube.wait_state(done, cri.CONTAINER_EXITED)

    listed = ctl("-o", "json", "pods", "ls")
    assert listed.returncode == 0, listed.stderr
    pods = {p["id"]: p for p in json.loads(listed.stdout)}
    assert pods[web_id]["containers_running"] == 1 and pods[web_id]["containers"] == 1
    assert pods[job_id]["containers_running"] == 0 and pods[job_id]["containers"] == 1
    table = ctl("pods", "ls", "-n", "batch").stdout
    assert "job" in table and "web" not in table.split("\n", 1)[1]
    assert ctl("pods", "ls", "-q", "-l", "app=web").stdout.split() == [web_id]
    kube.stop_pod(job_id)
    assert ctl("pods", "ls", "-q", "--state", "notready", "-n", "batch").stdout.split() == [job_id]

    ps = ctl("pods", "ps", "web").stdout.splitlines()
    assert len(ps) == 2 and cid[:13] in ps[1] and "Running" in ps[1] and "server" in ps[1]
    every = ctl("pods", "ps", "-a", "-n", "batch").stdout
    assert done[:13] in every and "Exited" in every

    inspected = json.loads(ctl("pods", "inspect", "default/web").stdout)
    assert inspected["status"]["id"] == web_id
    assert inspected["info"]["info"]["pid"] > 0  # the verbose info, as JSON
    assert [c["id"] for c in inspected["containers"]] == [cid]
    missing = ctl("pods", "inspect", "default/nope")
    assert missing.returncode == 3 and "no pod" in missing.stderr

    deadline = time.monotonic() + 20
    while "done" not in ctl("pods", "logs", cid).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    out = ctl("pods", "logs", "web/server")
    assert out.stdout == "out-1\npartial done\n" and out.stderr == "err-1\n"
    stamped = ctl("pods", "logs", "-t", cid).stdout.splitlines()
    assert stamped[0].endswith(" out-1") and stamped[0][:4].isdigit() and "T" in stamped[0]
    followed = ctl("pods", "logs", "-f", done)  # exited: prints what there is and returns
    assert followed.returncode == 0

    st = json.loads(ctl("-o", "json", "pods", "stats", "-n", "default").stdout)
    mine = [s for s in st if s["attributes"]["id"] == web_id]
    assert len(mine) == 1 and int(mine[0]["linux"]["memory"]["working_set_bytes"]["value"]) > 0
    assert web_id[:13] in ctl("pods", "stats").stdout

    # ps -A: pyctr's own containers and the kubelet's, told apart.
    native = ctl("run", "-d", "--name", "handmade", cri_env.app_ref, "sleep", "600")
    assert native.returncode == 0, native.stderr
    try:
        rows = ctl("ps", "-A").stdout.splitlines()
        assert rows[0].split()[-2:] == ["MANAGED", "BY"]
        mine_row = next(r for r in rows if "handmade" in r)
        kube_row = next(r for r in rows if "default/web/server" in r)
        assert mine_row.rstrip().endswith("pyctr") and kube_row.rstrip().endswith("kubelet")
        assert not any(done[:12] in r for r in rows)  # exited: only with -a
    finally:
        ctl("rm", "-f", "handmade")


def test_top_shows_cpu_memory_and_io(cri_env: CriEnv, kube: Kubelet) -> None:
    config = kube.pod_config("busy")
    pod_id = kube.run_pod(config)
    spin = kube.run(pod_id, config, "spin", [BB, "sh", "-c", "while :; do :; done"])
    idle = kube.run(pod_id, config, "idle")
    writer = kube.run(
        pod_id, config, "writer",
        [BB, "sh", "-c", "dd if=/dev/zero of=/f.tmp bs=64k count=64 conv=fsync 2>/dev/null;"
                         " mv /f.tmp /f; while :; do dd if=/dev/zero of=/g bs=64k count=4"
                         " conv=fsync 2>/dev/null; sleep 0.1; done"],
    )  # fmt: skip
    # 4 MiB written once, then small writes: under emulation the first take a while.
    deadline = time.monotonic() + scaled(30)
    while int(kube.sh(writer, f"{BB} stat -c %s /f 2>/dev/null || echo 0") or 0) < 4 << 20:
        assert time.monotonic() < deadline, "the writer never wrote its 4 MiB"
        time.sleep(0.2)
    out = cri_env.daemon.ctl("-o", "json", "top", "--interval", "1.5", "-n", "default")
    assert out.returncode == 0, out.stderr
    found = {r["id"]: r for r in json.loads(out.stdout)}
    assert {spin, idle, writer} <= set(found)
    assert found[spin]["cpu_percent"] > 20  # a busy loop: a good share of a core
    assert found[idle]["cpu_percent"] < found[spin]["cpu_percent"]
    assert all(found[c]["memory_bytes"] > 0 for c in (spin, idle, writer))
    assert found[writer]["writable_bytes"] >= 4 << 20
    assert found[idle]["write_bytes_per_second"] == 0
    assert found[writer]["write_bytes_per_second"] >= 0 and found[spin]["pod"] == "busy"
    table = cri_env.daemon.ctl("top", "--once", "--interval", "0.5").stdout.splitlines()
    assert table[0].split()[:3] == ["CONTAINER", "NAME", "POD"]
    assert any(spin[:13] in line for line in table[1:])
