"""Typed records and the state machine, without root: every (state, operation)
pair, (de)serialisation round trips, and the migration of rows of the old
`extra` shape (schema version 0) in one transaction."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pyctr.daemon.errors import FailedPrecondition, InvalidArgument
from pyctr.daemon.metadata import Metadata
from pyctr.daemon.runtime import records, store
from pyctr.daemon.runtime.cache import CachedStore
from pyctr.daemon.runtime.records import (
    BindMount,
    ConsoleSize,
    Container,
    ContainerMetadata,
    CriContainer,
    ImageSpec,
    Namespaces,
    NativeContainer,
    PodMetadata,
    Sandbox,
    StatusMount,
    from_row,
    to_row,
)
from pyctr.daemon.runtime.states import Op, PodState, Status, pod_is_ready, require
from pyctr.daemon.runtime.store import ContainerStore

C, R, E, U = Status.CREATED, Status.RUNNING, Status.EXITED, Status.UNKNOWN

# Written out by hand (not derived from states.py): which operations each
# state allows, and where the allowed ones lead.
ALLOWED: dict[Op, dict[Status, Status]] = {
    Op.CREATE_TASK: {C: C},
    Op.START: {C: R},
    Op.SIGNAL: {R: R},
    Op.EXEC: {R: R},
    Op.ATTACH: {C: C, R: R},
    Op.STOP: {R: R},
    Op.WAIT: {R: R},
    Op.UPDATE_RESOURCES: {C: C, R: R},
    Op.REMOVE: {C: C, E: E, U: U},
    Op.RECORD_EXIT: {C: E, R: E},
    Op.RECONNECT: {C: C, R: R},
}
REFUSALS = {
    Op.START: "container 0123456789ab is {}, not created",
    Op.SIGNAL: "container 0123456789ab is {}, not running",
    Op.EXEC: "container 0123456789ab is {}, not running",
    Op.ATTACH: "container 0123456789ab is {}; cannot attach",
    Op.REMOVE: "container 0123456789ab is {}; stop it first",
    Op.CREATE_TASK: "container 0123456789ab is {}",
    Op.UPDATE_RESOURCES: "container 0123456789ab is {}",
}
CID = "0123456789abcdef" * 4


def test_every_operation_has_a_row() -> None:
    assert set(ALLOWED) == set(Op)


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.value)
@pytest.mark.parametrize("status", list(Status), ids=str)
def test_state_machine(status: Status, op: Op) -> None:
    legal = status in ALLOWED[op]
    assert status.can(op) is legal
    if legal:
        assert status.after(op) is ALLOWED[op][status]
        require(status, op, CID)
    else:
        with pytest.raises(FailedPrecondition):
            status.after(op)
        with pytest.raises(FailedPrecondition) as e:
            require(status, op, CID)
        if op in REFUSALS:  # the words clients have always seen
            assert str(e.value) == REFUSALS[op].format(status)


def test_named_predicates_and_changes() -> None:
    pairs = {
        "can_create_task": Op.CREATE_TASK, "can_start": Op.START, "can_signal": Op.SIGNAL,
        "can_exec": Op.EXEC, "can_attach": Op.ATTACH, "can_stop": Op.STOP,
        "can_remove": Op.REMOVE, "can_update_resources": Op.UPDATE_RESOURCES,
        "may_exit": Op.RECORD_EXIT, "may_have_shim": Op.RECONNECT,
    }  # fmt: skip
    for status in Status:
        for name, op in pairs.items():
            assert getattr(status, name) is status.can(op), (status, name)
        assert status.is_running is (status is R)
        assert status.has_exited is (status is E)
        for new in Status:
            expected = (status, new) in {(C, R), (C, E), (R, E)}
            assert status.can_become(new) is expected, (status, new)
    # The stored strings.
    assert [str(s) for s in Status] == ["created", "running", "exited", "unknown"]
    assert [str(s) for s in PodState] == ["ready", "notready"]


@pytest.mark.parametrize("status", list(Status), ids=str)
@pytest.mark.parametrize("state", list(PodState), ids=str)
def test_pod_readiness(status: Status, state: PodState) -> None:
    assert pod_is_ready(status, state) is (status is R and state is PodState.READY)


# -- round trips -----------------------------------------------------------------


def _samples() -> list[Container]:
    common: dict[str, Any] = {
        "spec": {"process": {"args": ["sh"]}},
        "labels": {"a": "b"},
        "annotations": {"c": "d"},
        "created_at": 1_700_000_000_123_456_789,
        "pid": 42,
        "started_at": 1_700_000_001_000_000_001,
    }
    return [
        Container(id="1" * 64, name="plain", **common),
        NativeContainer(
            id="2" * 64, name="native", status=E, exit_code=3, reason="Error",
            finished_at=1_700_000_002_000_000_002, tty=True, stdin=True, auto_remove=True,
            log_path="/var/lib/pyctr/logs/x.log", console_size=ConsoleSize(80, 24),
            network="host", mounts=[BindMount("/src", "/dst", True)], **common,
        ),
        CriContainer(
            id="3" * 64, name="app_p_ns_uid_0", sandbox_id="4" * 64, status=R,
            metadata=ContainerMetadata("app", 1),
            image_spec=ImageSpec("img", {"k": "v"}, "img:1", "runc"),
            image_ref="reg/img@sha256:" + "a" * 64, image_name="reg/img:1",
            mounts=[StatusMount("/data", "/host", True, 2, True)], stop_signal=10,
            image_stop_signal="SIGUSR1", stdin_once=True, log_path="/logs/app/1.log", **common,
        ),
        Sandbox(
            id="4" * 64, name="p_ns_uid_0", status=R, metadata=PodMetadata("p", "uid", "ns", 2),
            hostname="p", log_directory="/logs", runtime_handler="runc",
            namespaces=Namespaces(0, 1, 2), netns="/run/netns/x", ips=["10.0.0.2", "fd00::2"],
            cgroup_parent="/kubepods/pod1", own_cgroup_parent=True, privileged=True,
            state=PodState.NOTREADY, config={"metadata": {"name": "p"}},
            ns_inodes={"net": 4026532000}, **common,
        ),
    ]  # fmt: skip


@pytest.mark.parametrize("record", _samples(), ids=lambda r: type(r).__name__)
def test_round_trip(record: Container) -> None:
    row = to_row(record)
    assert set(row) == {*records.COLUMNS, "details"}
    assert json.loads(row["details"])["type"] == record.TYPE
    back = from_row(row)
    assert type(back) is type(record) and back == record
    assert isinstance(back.status, Status)


def test_states_given_as_strings_become_the_enums() -> None:
    sb = Sandbox(id="5" * 64, name="s", status="running", state="notready")  # type: ignore[arg-type]
    assert sb.status is Status.RUNNING and sb.state is PodState.NOTREADY and not sb.ready
    with pytest.raises(ValueError):
        Container(id="6" * 64, name="c", status="paused")  # type: ignore[arg-type]


def test_a_record_that_does_not_fit_is_refused() -> None:
    row = to_row(_samples()[3])
    for bad in ({"ips": "10.0.0.2"}, {"state": "half"}, {"namespaces": {"pid": "x"}},
                {"type": "robot"}):  # fmt: skip
        details = {**json.loads(row["details"]), **bad}
        with pytest.raises(InvalidArgument):
            from_row({**row, "details": json.dumps(details)})
    with pytest.raises(InvalidArgument, match="kind"):
        from_row({**row, "kind": "container"})


def test_store_round_trip_copies_and_state_checks(tmp_path: Path) -> None:
    db = Metadata(tmp_path / "meta.db")
    cached = CachedStore(db)
    for r in _samples():
        cached.add(r)
    assert (
        ContainerStore(db).list() == cached.list() == sorted(_samples(), key=lambda r: r.created_at)
    )
    sb = cached.get_as("4" * 64, Sandbox)
    sb.ips.append("10.9.9.9")
    sb.metadata.name = "changed"
    assert cached.get_as(sb.id, Sandbox).ips == ["10.0.0.2", "fd00::2"]
    assert cached.get_as(sb.id, Sandbox).metadata.name == "p"
    assert [c.id for c in cached.list_of(CriContainer, sandbox_id=sb.id)] == ["3" * 64]
    updated = cached.update(sb.id, state=PodState.READY, ips=[])
    assert isinstance(updated, Sandbox) and updated.ready and updated.ips == []
    assert ContainerStore(db).get_as(sb.id, Sandbox) == updated
    with pytest.raises(FailedPrecondition, match="cannot become"):
        cached.update("2" * 64, status=R)  # exited is final
    with pytest.raises(TypeError):
        cached.update("1" * 64, ips=[])  # not a field of a plain record
    assert cached.update("1" * 64) == ContainerStore(db).get("1" * 64)  # nothing to change
    db.close()


# -- migration from the `extra` shape -------------------------------------------

# The table as pyctr wrote it up to 149991d (schema version 0).
V0_SCHEMA = """
CREATE TABLE containers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    sandbox_id TEXT NOT NULL DEFAULT '', image TEXT NOT NULL DEFAULT '',
    image_id TEXT NOT NULL DEFAULT '', snapshot TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL DEFAULT '{}', labels TEXT NOT NULL DEFAULT '{}',
    annotations TEXT NOT NULL DEFAULT '{}', extra TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL, status TEXT NOT NULL, pid INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL DEFAULT 0, finished_at INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX containers_sandbox ON containers(sandbox_id);
"""

# `extra` as the old native_record, SandboxManager.run/create_container wrote it.
V0_EXTRA: dict[str, dict[str, Any]] = {
    "1" * 64: {},
    "2" * 64: {
        "native": True, "tty": True, "stdin": True, "auto_remove": True, "network": "host",
        "console_size": {"width": 80, "height": 24},
        "mounts": [{"source": "/src", "destination": "/dst", "readonly": True}],
        "log_path": "/var/lib/pyctr/logs/x.log",
    },
    "3" * 64: {
        "metadata": {"name": "app", "attempt": 1},
        "image_spec": {"image": "img", "annotations": {"k": "v"},
                       "user_specified_image": "img:1", "runtime_handler": "runc"},
        "image_ref": "reg/img@sha256:" + "a" * 64, "image_name": "reg/img:1",
        "log_path": "/logs/app/1.log", "tty": False, "stdin": False, "stdin_once": True,
        "mounts": [{"container_path": "/data", "host_path": "/host", "readonly": True,
                    "propagation": 2, "selinux_relabel": True}],
        "stop_signal": 10, "image_stop_signal": "SIGUSR1",
    },
    "4" * 64: {
        "metadata": {"name": "p", "uid": "uid", "namespace": "ns", "attempt": 2},
        "hostname": "p", "log_directory": "/logs", "runtime_handler": "runc",
        "namespaces": {"network": 0, "pid": 1, "ipc": 2}, "netns": "/run/netns/x",
        "ips": ["10.0.0.2", "fd00::2"], "cgroup_parent": "/kubepods/pod1",
        "own_cgroup_parent": True, "privileged": True, "state": "notready",
        "config": {"metadata": {"name": "p"}}, "ns_inodes": {"net": 4026532000},
    },
}  # fmt: skip


def _old_root(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(V0_SCHEMA)
    with db:
        for r in _samples():
            row = {k: v for k, v in to_row(r).items() if k != "details"}
            row["extra"] = json.dumps(V0_EXTRA[r.id])
            cols = ", ".join(row)
            db.execute(
                f"INSERT INTO containers ({cols}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
    db.close()


def _v0_rows(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM containers ORDER BY id").fetchall()
    finally:
        db.close()


def test_v0_rows_migrate_to_typed_records(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    _old_root(path)
    db = Metadata(path)
    assert CachedStore(db).list() == sorted(_samples(), key=lambda r: r.created_at)
    columns = [r["name"] for r in db.query("PRAGMA table_info(containers)")]
    assert "extra" not in columns and columns[-1] == "details"
    assert db.query("SELECT version FROM schema_versions WHERE name = 'containers'")[0][0] == 1
    assert db.query("SELECT name FROM sqlite_master WHERE name = 'containers_sandbox'")
    migrated = _v0_rows(path)
    db.close()
    # Idempotent: opening again (twice) changes nothing.
    for _ in range(2):
        db = Metadata(path)
        ContainerStore(db)
        db.close()
        assert _v0_rows(path) == migrated


def test_a_crash_mid_migration_leaves_the_old_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "meta.db"
    _old_root(path)
    before = _v0_rows(path)
    seen = []
    real = records.from_v0

    def dying(row: Any) -> Container:
        seen.append(row["id"])
        if len(seen) == 3:  # two rows already written to the new table
            os._exit(7)  # as a crash would: no rollback, no cleanup
        return real(row)

    monkeypatch.setattr(store, "from_v0", dying)
    pid = os.fork()
    if pid == 0:
        try:
            ContainerStore(Metadata(path))
        finally:
            os._exit(1)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 7
    assert _v0_rows(path) == before  # untouched: the old shape, every row
    monkeypatch.setattr(store, "from_v0", real)
    db = Metadata(path)
    assert len(ContainerStore(db).list()) == len(before)
    db.close()


def test_a_row_that_cannot_migrate_stops_the_open_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    _old_root(path)
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE containers SET extra = ? WHERE id = ?", ('{"ips": 5}', "4" * 64))
    db.close()
    before = _v0_rows(path)
    meta = Metadata(path)
    with pytest.raises(InvalidArgument, match="ips"):
        ContainerStore(meta)
    meta.close()
    assert _v0_rows(path) == before


def test_a_table_from_a_newer_pyctr_is_refused(tmp_path: Path) -> None:
    db = Metadata(tmp_path / "meta.db")
    ContainerStore(db)
    with db.tx() as tx:
        db.set_schema_version(tx, "containers", store.SCHEMA_VERSION + 1)
    with pytest.raises(FailedPrecondition, match="newer"):
        ContainerStore(db)
    db.close()
