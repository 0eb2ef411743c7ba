from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionResponse(_message.Message):
    __slots__ = ("version", "cri_api_version", "api_version", "python")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CRI_API_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    version: str
    cri_api_version: str
    api_version: str
    python: str
    def __init__(self, version: _Optional[str] = ..., cri_api_version: _Optional[str] = ..., api_version: _Optional[str] = ..., python: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Feature(_message.Message):
    __slots__ = ("name", "value", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("root", "state", "address", "config_file", "config_toml", "runc_path", "runc_version", "kernel", "features", "pid", "started_at")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    RUNC_PATH_FIELD_NUMBER: _ClassVar[int]
    RUNC_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    root: str
    state: str
    address: str
    config_file: str
    config_toml: str
    runc_path: str
    runc_version: str
    kernel: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    pid: int
    started_at: int
    def __init__(self, root: _Optional[str] = ..., state: _Optional[str] = ..., address: _Optional[str] = ..., config_file: _Optional[str] = ..., config_toml: _Optional[str] = ..., runc_path: _Optional[str] = ..., runc_version: _Optional[str] = ..., kernel: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., pid: _Optional[int] = ..., started_at: _Optional[int] = ...) -> None: ...

class ListNriPluginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NriPlugin(_message.Message):
    __slots__ = ("name", "index", "kind", "pid", "events", "connected_at", "synchronized", "api")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    SYNCHRONIZED_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: str
    kind: str
    pid: int
    events: _containers.RepeatedScalarFieldContainer[str]
    connected_at: int
    synchronized: bool
    api: str
    def __init__(self, name: _Optional[str] = ..., index: _Optional[str] = ..., kind: _Optional[str] = ..., pid: _Optional[int] = ..., events: _Optional[_Iterable[str]] = ..., connected_at: _Optional[int] = ..., synchronized: _Optional[bool] = ..., api: _Optional[str] = ...) -> None: ...

class ListNriPluginsResponse(_message.Message):
    __slots__ = ("enabled", "socket", "plugins", "missing", "socket_error")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    SOCKET_ERROR_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    socket: str
    plugins: _containers.RepeatedCompositeFieldContainer[NriPlugin]
    missing: _containers.RepeatedScalarFieldContainer[str]
    socket_error: str
    def __init__(self, enabled: _Optional[bool] = ..., socket: _Optional[str] = ..., plugins: _Optional[_Iterable[_Union[NriPlugin, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ..., socket_error: _Optional[str] = ...) -> None: ...
