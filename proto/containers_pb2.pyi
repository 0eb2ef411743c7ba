from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContainerMount(_message.Message):
    __slots__ = ("source", "destination", "readonly")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    readonly: bool
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., readonly: _Optional[bool] = ...) -> None: ...

class ContainerCreateRequest(_message.Message):
    __slots__ = ("image", "name", "command", "args", "env", "workdir", "user", "tty", "stdin", "mounts", "labels", "network", "auto_remove", "hostname", "readonly_rootfs", "size")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    READONLY_ROOTFS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    image: str
    name: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    user: str
    tty: bool
    stdin: bool
    mounts: _containers.RepeatedCompositeFieldContainer[ContainerMount]
    labels: _containers.ScalarMap[str, str]
    network: str
    auto_remove: bool
    hostname: str
    readonly_rootfs: bool
    size: ContainerResize
    def __init__(self, image: _Optional[str] = ..., name: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., tty: _Optional[bool] = ..., stdin: _Optional[bool] = ..., mounts: _Optional[_Iterable[_Union[ContainerMount, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., network: _Optional[str] = ..., auto_remove: _Optional[bool] = ..., hostname: _Optional[str] = ..., readonly_rootfs: _Optional[bool] = ..., size: _Optional[_Union[ContainerResize, _Mapping]] = ...) -> None: ...

class ContainerCreateResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class ContainerExit(_message.Message):
    __slots__ = ("exit_code", "signal", "exited_at", "oom_killed")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: int
    exited_at: int
    oom_killed: bool
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., exited_at: _Optional[int] = ..., oom_killed: _Optional[bool] = ...) -> None: ...

class ContainerInfo(_message.Message):
    __slots__ = ("id", "name", "image", "image_id", "status", "pid", "created_at", "started_at", "finished_at", "exit_code", "reason", "message", "args", "labels", "tty", "stdin", "log_path", "auto_remove", "kind", "sandbox_id", "network")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    image: str
    image_id: str
    status: str
    pid: int
    created_at: int
    started_at: int
    finished_at: int
    exit_code: int
    reason: str
    message: str
    args: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    tty: bool
    stdin: bool
    log_path: str
    auto_remove: bool
    kind: str
    sandbox_id: str
    network: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., image: _Optional[str] = ..., image_id: _Optional[str] = ..., status: _Optional[str] = ..., pid: _Optional[int] = ..., created_at: _Optional[int] = ..., started_at: _Optional[int] = ..., finished_at: _Optional[int] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., tty: _Optional[bool] = ..., stdin: _Optional[bool] = ..., log_path: _Optional[str] = ..., auto_remove: _Optional[bool] = ..., kind: _Optional[str] = ..., sandbox_id: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class ContainerStartRequest(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: str
    def __init__(self, container: _Optional[str] = ...) -> None: ...

class ContainerStartResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class ContainerListRequest(_message.Message):
    __slots__ = ("all", "labels", "sandboxes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    all: bool
    labels: _containers.ScalarMap[str, str]
    sandboxes: bool
    def __init__(self, all: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., sandboxes: _Optional[bool] = ...) -> None: ...

class ContainerListResponse(_message.Message):
    __slots__ = ("containers",)
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[ContainerInfo]
    def __init__(self, containers: _Optional[_Iterable[_Union[ContainerInfo, _Mapping]]] = ...) -> None: ...

class ContainerGetRequest(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: str
    def __init__(self, container: _Optional[str] = ...) -> None: ...

class ContainerGetResponse(_message.Message):
    __slots__ = ("container", "spec_json")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    spec_json: str
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ..., spec_json: _Optional[str] = ...) -> None: ...

class ContainerKillRequest(_message.Message):
    __slots__ = ("container", "signal", "all")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    container: str
    signal: int
    all: bool
    def __init__(self, container: _Optional[str] = ..., signal: _Optional[int] = ..., all: _Optional[bool] = ...) -> None: ...

class ContainerKillResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContainerStopRequest(_message.Message):
    __slots__ = ("container", "timeout", "signal")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    container: str
    timeout: float
    signal: int
    def __init__(self, container: _Optional[str] = ..., timeout: _Optional[float] = ..., signal: _Optional[int] = ...) -> None: ...

class ContainerStopResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class ContainerRemoveRequest(_message.Message):
    __slots__ = ("container", "force")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    container: str
    force: bool
    def __init__(self, container: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class ContainerRemoveResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ContainerWaitRequest(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: str
    def __init__(self, container: _Optional[str] = ...) -> None: ...

class ContainerWaitResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: ContainerInfo
    def __init__(self, container: _Optional[_Union[ContainerInfo, _Mapping]] = ...) -> None: ...

class ContainerResize(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ContainerExecStart(_message.Message):
    __slots__ = ("container", "args", "tty", "stdin", "env", "workdir", "user", "size")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    container: str
    args: _containers.RepeatedScalarFieldContainer[str]
    tty: bool
    stdin: bool
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    user: str
    size: ContainerResize
    def __init__(self, container: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., tty: _Optional[bool] = ..., stdin: _Optional[bool] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., size: _Optional[_Union[ContainerResize, _Mapping]] = ...) -> None: ...

class ContainerExecRequest(_message.Message):
    __slots__ = ("start", "stdin", "resize", "close_stdin")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    start: ContainerExecStart
    stdin: bytes
    resize: ContainerResize
    close_stdin: bool
    def __init__(self, start: _Optional[_Union[ContainerExecStart, _Mapping]] = ..., stdin: _Optional[bytes] = ..., resize: _Optional[_Union[ContainerResize, _Mapping]] = ..., close_stdin: _Optional[bool] = ...) -> None: ...

class ContainerAttachOpen(_message.Message):
    __slots__ = ("container", "stdin")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    container: str
    stdin: bool
    def __init__(self, container: _Optional[str] = ..., stdin: _Optional[bool] = ...) -> None: ...

class ContainerAttachRequest(_message.Message):
    __slots__ = ("open", "stdin", "resize", "close_stdin")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    open: ContainerAttachOpen
    stdin: bytes
    resize: ContainerResize
    close_stdin: bool
    def __init__(self, open: _Optional[_Union[ContainerAttachOpen, _Mapping]] = ..., stdin: _Optional[bytes] = ..., resize: _Optional[_Union[ContainerResize, _Mapping]] = ..., close_stdin: _Optional[bool] = ...) -> None: ...

class ContainerIOReady(_message.Message):
    __slots__ = ("pid", "exec_id")
    PID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    exec_id: str
    def __init__(self, pid: _Optional[int] = ..., exec_id: _Optional[str] = ...) -> None: ...

class ContainerIOResponse(_message.Message):
    __slots__ = ("ready", "stdout", "stderr", "exit")
    READY_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    ready: ContainerIOReady
    stdout: bytes
    stderr: bytes
    exit: ContainerExit
    def __init__(self, ready: _Optional[_Union[ContainerIOReady, _Mapping]] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit: _Optional[_Union[ContainerExit, _Mapping]] = ...) -> None: ...

class ContainerLogsRequest(_message.Message):
    __slots__ = ("container", "follow", "tail", "since")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    container: str
    follow: bool
    tail: int
    since: int
    def __init__(self, container: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., since: _Optional[int] = ...) -> None: ...

class ContainerLogEntry(_message.Message):
    __slots__ = ("timestamp", "stream", "data")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    stream: str
    data: bytes
    def __init__(self, timestamp: _Optional[int] = ..., stream: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ContainerLogsResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ContainerLogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[ContainerLogEntry, _Mapping]]] = ...) -> None: ...

class EventsSubscribeRequest(_message.Message):
    __slots__ = ("topics",)
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topics: _Optional[_Iterable[str]] = ...) -> None: ...

class EventEnvelope(_message.Message):
    __slots__ = ("topic", "subject", "data_json", "timestamp", "dropped")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    topic: str
    subject: str
    data_json: str
    timestamp: int
    dropped: int
    def __init__(self, topic: _Optional[str] = ..., subject: _Optional[str] = ..., data_json: _Optional[str] = ..., timestamp: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...
