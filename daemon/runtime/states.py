"""Container and pod states, and every legal move between them, in one place.

    created --start--> running --exit--> exited
       '-------------exit (start failed)----^

A container (or a pod's pause container) is `created` once its rootfs and
bundle exist, `running` once its process started, `exited` once its exit
is recorded; it never leaves `exited`. `unknown` is never stored: it is what
the CRI calls a state pyctr cannot name. A pod is ready while its pause
container runs and it has not been stopped; stopping it is final too.

Handlers ask `Status.can(op)` (or the named shorthands) instead of comparing
strings, and `require` raises the FailedPrecondition the API has always
answered with. The values are the strings stored in meta.db and shown by
`pyctr ps`, so they must not change.
"""

from __future__ import annotations

from enum import Enum, StrEnum

from pyctr.daemon.errors import FailedPrecondition


class Op(Enum):
    """What a handler wants to do with a container."""

    CREATE_TASK = "create_task"  # spawn the shim (`runc create`), for attach or start
    START = "start"
    SIGNAL = "signal"  # kill, or any call to the running shim (update, reopen log)
    EXEC = "exec"
    ATTACH = "attach"
    STOP = "stop"  # signal and wait; on a container not running, a no-op
    WAIT = "wait"  # blocks only while the container can still exit
    UPDATE_RESOURCES = "update_resources"  # live while running, in the bundle before
    REMOVE = "remove"  # without force
    RECORD_EXIT = "record_exit"  # the shim said it exited (or it never started)
    RECONNECT = "reconnect"  # at daemon start: a shim may still hold it


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"

    def can(self, op: Op) -> bool:
        return self in _LEGAL[op]

    def after(self, op: Op) -> Status:
        """The state `op` leads to; FailedPrecondition if it is not legal here."""
        if not self.can(op):
            raise FailedPrecondition(f"cannot {op.value} a container that is {self}")
        return _NEXT.get((self, op), self)

    def can_become(self, new: Status) -> bool:
        """Whether some operation leads from here to `new` (the store's check)."""
        return any(old is self and to is new for (old, _), to in _NEXT.items())

    # The questions handlers ask, by name.
    @property
    def can_create_task(self) -> bool:
        return self.can(Op.CREATE_TASK)

    @property
    def can_start(self) -> bool:
        return self.can(Op.START)

    @property
    def can_signal(self) -> bool:
        return self.can(Op.SIGNAL)

    @property
    def can_exec(self) -> bool:
        return self.can(Op.EXEC)

    @property
    def can_attach(self) -> bool:
        return self.can(Op.ATTACH)

    @property
    def can_stop(self) -> bool:
        return self.can(Op.STOP)

    @property
    def can_remove(self) -> bool:
        return self.can(Op.REMOVE)

    @property
    def can_update_resources(self) -> bool:
        return self.can(Op.UPDATE_RESOURCES)

    @property
    def may_exit(self) -> bool:
        """Its exit is still to come (a wait blocks, an exit would be news)."""
        return self.can(Op.RECORD_EXIT)

    @property
    def may_have_shim(self) -> bool:
        return self.can(Op.RECONNECT)

    @property
    def is_running(self) -> bool:
        """Its process runs: it has a cgroup, a pid, output to follow."""
        return self is Status.RUNNING

    @property
    def has_exited(self) -> bool:
        """Its exit code, reason and message are final and reported."""
        return self is Status.EXITED


C, R, E = Status.CREATED, Status.RUNNING, Status.EXITED

# Where each operation is allowed.
_LEGAL: dict[Op, frozenset[Status]] = {
    Op.CREATE_TASK: frozenset({C}),
    Op.START: frozenset({C}),
    Op.SIGNAL: frozenset({R}),
    Op.EXEC: frozenset({R}),
    Op.ATTACH: frozenset({C, R}),
    Op.STOP: frozenset({R}),
    Op.WAIT: frozenset({R}),
    Op.UPDATE_RESOURCES: frozenset({C, R}),
    Op.REMOVE: frozenset({C, E, Status.UNKNOWN}),
    Op.RECORD_EXIT: frozenset({C, R}),
    Op.RECONNECT: frozenset({C, R}),
}

# The operations that change the state; every other legal one leaves it.
_NEXT: dict[tuple[Status, Op], Status] = {
    (C, Op.START): R,
    (C, Op.RECORD_EXIT): E,  # the start failed, or the shim died before it
    (R, Op.RECORD_EXIT): E,
}

# What the API says when an operation is refused (the wording clients see).
_REFUSAL: dict[Op, str] = {
    Op.CREATE_TASK: "",
    Op.START: ", not created",
    Op.SIGNAL: ", not running",
    Op.EXEC: ", not running",
    Op.ATTACH: "; cannot attach",
    Op.UPDATE_RESOURCES: "",
    Op.REMOVE: "; stop it first",
}


def require(status: Status, op: Op, cid: str) -> None:
    """FailedPrecondition naming the container unless `op` is legal in `status`."""
    if not status.can(op):
        raise FailedPrecondition(f"container {cid[:12]} is {status}{_REFUSAL.get(op, '')}")


class PodState(StrEnum):
    READY = "ready"
    NOTREADY = "notready"


def pod_is_ready(status: Status, state: PodState) -> bool:
    """Ready: its pause container runs and the pod was not stopped. Only a
    ready pod takes new containers and starts them."""
    return status.is_running and state is PodState.READY
