from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SnapshotListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("key", "parent", "kind", "labels", "created_at", "updated_at", "used_by")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    key: str
    parent: str
    kind: str
    labels: _containers.ScalarMap[str, str]
    created_at: int
    updated_at: int
    used_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., parent: _Optional[str] = ..., kind: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., used_by: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotListResponse(_message.Message):
    __slots__ = ("snapshots", "backend")
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[SnapshotInfo]
    backend: str
    def __init__(self, snapshots: _Optional[_Iterable[_Union[SnapshotInfo, _Mapping]]] = ..., backend: _Optional[str] = ...) -> None: ...

class SnapshotKeyRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class SnapshotUsage(_message.Message):
    __slots__ = ("size_bytes", "inodes")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INODES_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    inodes: int
    def __init__(self, size_bytes: _Optional[int] = ..., inodes: _Optional[int] = ...) -> None: ...

class SnapshotMount(_message.Message):
    __slots__ = ("type", "source", "options")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    type: str
    source: str
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type: _Optional[str] = ..., source: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotMounts(_message.Message):
    __slots__ = ("mounts",)
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    mounts: _containers.RepeatedCompositeFieldContainer[SnapshotMount]
    def __init__(self, mounts: _Optional[_Iterable[_Union[SnapshotMount, _Mapping]]] = ...) -> None: ...

class SnapshotRemoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
