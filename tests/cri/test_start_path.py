"""What the faster start path must keep: CNI ADD alongside the pause container."""

from __future__ import annotations

import json
import sqlite3

from pyctr.proto import cri_pb2 as cri
from tests.cri.conftest import CriEnv, Kubelet


def test_pod_ips_recorded_once_add_and_pause_are_both_done(cri_env: CriEnv, kube: Kubelet) -> None:
    pod_id = kube.run_pod(kube.pod_config("overlap"))
    status = kube.pod_status(pod_id)
    assert status.state == cri.SANDBOX_READY and status.network.ip
    # The hosts file names the pod's own IP, written after ADD finished.
    hosts = (cri_env.daemon.state / "pods" / pod_id / "hosts").read_text()
    assert f"{status.network.ip}\toverlap" in hosts
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)


def test_a_run_interrupted_before_its_ips_were_recorded_gets_them_back(
    cri_env: CriEnv, kube: Kubelet
) -> None:
    pod_id = kube.run_pod(kube.pod_config("ipless"))
    ip = kube.pod_status(pod_id).network.ip
    assert ip
    # As a crash between the pause container's start and its commit leaves
    # it: recorded without IPs (the CNI cache still has ADD's result).
    db = sqlite3.connect(cri_env.daemon.root / "meta.db")
    try:
        (raw,) = db.execute("SELECT details FROM containers WHERE id = ?", (pod_id,)).fetchone()
        details = json.loads(raw)
        details["ips"] = []
        with db:
            db.execute(
                "UPDATE containers SET details = ? WHERE id = ?", (json.dumps(details), pod_id)
            )
    finally:
        db.close()
    cri_env.restart(crash=True)
    status = kube.pod_status(pod_id)
    assert status.state == cri.SANDBOX_READY and status.network.ip == ip
    kube.stop_pod(pod_id)
    kube.remove_pod(pod_id)
    assert cri_env.reservations() == []
