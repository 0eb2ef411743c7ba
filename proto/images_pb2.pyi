from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageAuth(_message.Message):
    __slots__ = ("username", "password", "auth", "identity_token", "registry_token")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    auth: str
    identity_token: str
    registry_token: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., auth: _Optional[str] = ..., identity_token: _Optional[str] = ..., registry_token: _Optional[str] = ...) -> None: ...

class ImagePullRequest(_message.Message):
    __slots__ = ("reference", "platform", "auth")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    reference: str
    platform: str
    auth: ImageAuth
    def __init__(self, reference: _Optional[str] = ..., platform: _Optional[str] = ..., auth: _Optional[_Union[ImageAuth, _Mapping]] = ...) -> None: ...

class ImageLayerProgress(_message.Message):
    __slots__ = ("digest", "media_type", "size", "done", "state")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    size: int
    done: int
    state: str
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ..., done: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ImagePullProgress(_message.Message):
    __slots__ = ("reference", "phase", "manifest_digest", "layers", "image")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    reference: str
    phase: str
    manifest_digest: str
    layers: _containers.RepeatedCompositeFieldContainer[ImageLayerProgress]
    image: ImageRecord
    def __init__(self, reference: _Optional[str] = ..., phase: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[ImageLayerProgress, _Mapping]]] = ..., image: _Optional[_Union[ImageRecord, _Mapping]] = ...) -> None: ...

class ImageName(_message.Message):
    __slots__ = ("name", "target_digest", "target_media_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TARGET_MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    target_digest: str
    target_media_type: str
    def __init__(self, name: _Optional[str] = ..., target_digest: _Optional[str] = ..., target_media_type: _Optional[str] = ...) -> None: ...

class ImageLayer(_message.Message):
    __slots__ = ("digest", "media_type", "size", "diff_id")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIFF_ID_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    size: int
    diff_id: str
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ..., diff_id: _Optional[str] = ...) -> None: ...

class ImageRecord(_message.Message):
    __slots__ = ("id", "repo_tags", "repo_digests", "names", "manifest_digest", "manifest_media_type", "layers", "chain_id", "size", "user", "labels", "platform", "created_at", "updated_at")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    REPO_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    repo_digests: _containers.RepeatedScalarFieldContainer[str]
    names: _containers.RepeatedCompositeFieldContainer[ImageName]
    manifest_digest: str
    manifest_media_type: str
    layers: _containers.RepeatedCompositeFieldContainer[ImageLayer]
    chain_id: str
    size: int
    user: str
    labels: _containers.ScalarMap[str, str]
    platform: str
    created_at: int
    updated_at: int
    def __init__(self, id: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ..., repo_digests: _Optional[_Iterable[str]] = ..., names: _Optional[_Iterable[_Union[ImageName, _Mapping]]] = ..., manifest_digest: _Optional[str] = ..., manifest_media_type: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[ImageLayer, _Mapping]]] = ..., chain_id: _Optional[str] = ..., size: _Optional[int] = ..., user: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., platform: _Optional[str] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ...) -> None: ...

class ImageListRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: str
    def __init__(self, filter: _Optional[str] = ...) -> None: ...

class ImageListResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    def __init__(self, images: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ...) -> None: ...

class ImageGetRequest(_message.Message):
    __slots__ = ("reference",)
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    reference: str
    def __init__(self, reference: _Optional[str] = ...) -> None: ...

class ImageGetResponse(_message.Message):
    __slots__ = ("image", "manifest_json", "config_json")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    image: ImageRecord
    manifest_json: str
    config_json: str
    def __init__(self, image: _Optional[_Union[ImageRecord, _Mapping]] = ..., manifest_json: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class ImageRemoveRequest(_message.Message):
    __slots__ = ("reference", "no_gc")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    NO_GC_FIELD_NUMBER: _ClassVar[int]
    reference: str
    no_gc: bool
    def __init__(self, reference: _Optional[str] = ..., no_gc: _Optional[bool] = ...) -> None: ...

class ImageRemoveResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class ImageTagRequest(_message.Message):
    __slots__ = ("reference", "new_name")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    reference: str
    new_name: str
    def __init__(self, reference: _Optional[str] = ..., new_name: _Optional[str] = ...) -> None: ...

class ImageTagResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ImageRecord
    def __init__(self, image: _Optional[_Union[ImageRecord, _Mapping]] = ...) -> None: ...

class ContentBlob(_message.Message):
    __slots__ = ("digest", "size", "created_at")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    created_at: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., created_at: _Optional[int] = ...) -> None: ...

class ContentIngest(_message.Message):
    __slots__ = ("ref", "digest", "size", "offset", "updated_at")
    REF_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ref: str
    digest: str
    size: int
    offset: int
    updated_at: int
    def __init__(self, ref: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., updated_at: _Optional[int] = ...) -> None: ...

class ContentListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContentListResponse(_message.Message):
    __slots__ = ("blobs", "ingests")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    INGESTS_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[ContentBlob]
    ingests: _containers.RepeatedCompositeFieldContainer[ContentIngest]
    def __init__(self, blobs: _Optional[_Iterable[_Union[ContentBlob, _Mapping]]] = ..., ingests: _Optional[_Iterable[_Union[ContentIngest, _Mapping]]] = ...) -> None: ...

class ContentInfoRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class ContentInfoResponse(_message.Message):
    __slots__ = ("blob",)
    BLOB_FIELD_NUMBER: _ClassVar[int]
    blob: ContentBlob
    def __init__(self, blob: _Optional[_Union[ContentBlob, _Mapping]] = ...) -> None: ...

class GCCollectRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GCCollectResponse(_message.Message):
    __slots__ = ("leases_expired", "blobs_removed", "ingests_removed", "snapshots_removed", "bytes_freed", "duration_seconds")
    LEASES_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    INGESTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    leases_expired: int
    blobs_removed: _containers.RepeatedScalarFieldContainer[str]
    ingests_removed: _containers.RepeatedScalarFieldContainer[str]
    snapshots_removed: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    duration_seconds: float
    def __init__(self, leases_expired: _Optional[int] = ..., blobs_removed: _Optional[_Iterable[str]] = ..., ingests_removed: _Optional[_Iterable[str]] = ..., snapshots_removed: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ..., duration_seconds: _Optional[float] = ...) -> None: ...
