"""Which tests the guest lane runs: the one place that says so.

    python3 tests/vm/sets.py smoke    # prints the set's pytest arguments, one a line

tests/vm/guest-job reads this inside the guest; tests/vm/run --set NAME picks one.
Measured times under TCG on the 2-core CI machine are in tests/vm/README.md.
"""

from __future__ import annotations

import sys

SETS: dict[str, list[str]] = {
    # Small enough for CI (image build + boot + smoke within 15 minutes under TCG):
    # CRI pod and container lifecycle, limits, stats, OOM, restart survival.
    "smoke": [
        "tests/cri/test_pods.py::test_kubelet_sequence_leaves_nothing_behind",
        "tests/cri/test_lifecycle.py::test_container_events",
        "tests/cri/test_containers.py::test_resources_applied_and_updated_live",
        "tests/cri/test_containers.py::test_stats",
        "tests/cri/test_containers.py::test_oom_killed_container_is_reported",
        "tests/cri/test_lifecycle.py::test_pods_survive_daemon_restart_and_crash",
        "tests/containers/test_survival.py::test_containers_survive_kill_9_of_the_daemon",
        # systemd itself: pyctrd as its unit restarts without killing containers;
        # RuntimeConfig tells the kubelet the driver; cgroup naming per driver.
        "tests/containers/test_systemd_unit.py",
        "tests/cri/test_lifecycle.py::test_runtime_settings_and_status",
        "tests/runtime/test_cgroups.py",
    ],
    # Everything that touches cgroups and the runtime: the CRI (pods, containers,
    # stats, OOM, limits), the container CLI with restart survival, and the faults.
    "full": [
        "tests/cri",
        "tests/containers",
        "tests/faults",
        "tests/runtime",
        "tests/shim",
        # Builds the previous release from git history, which the guest's copy
        # of the checkout lacks; schema migration is not a cgroup matter.
        "--deselect=tests/cri/test_old_root.py::test_a_root_made_by_the_previous_release_opens_the_same",
    ],
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in SETS:
        print(f"usage: sets.py {'|'.join(SETS)}", file=sys.stderr)
        return 2
    print("\n".join(SETS[argv[1]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
