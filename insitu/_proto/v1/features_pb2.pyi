from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReleaseInfo(_message.Message):
    __slots__ = ("release_id", "site_id", "dataset", "job_id", "purposes", "rows_out", "k_achieved", "policy_hash", "created_unix")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    ROWS_OUT_FIELD_NUMBER: _ClassVar[int]
    K_ACHIEVED_FIELD_NUMBER: _ClassVar[int]
    POLICY_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    site_id: str
    dataset: str
    job_id: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    rows_out: int
    k_achieved: int
    policy_hash: str
    created_unix: int
    def __init__(self, release_id: _Optional[str] = ..., site_id: _Optional[str] = ..., dataset: _Optional[str] = ..., job_id: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ..., rows_out: _Optional[int] = ..., k_achieved: _Optional[int] = ..., policy_hash: _Optional[str] = ..., created_unix: _Optional[int] = ...) -> None: ...

class ListReleasesRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListReleasesResponse(_message.Message):
    __slots__ = ("releases",)
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[ReleaseInfo]
    def __init__(self, releases: _Optional[_Iterable[_Union[ReleaseInfo, _Mapping]]] = ...) -> None: ...

class ReadReleaseRequest(_message.Message):
    __slots__ = ("release_id",)
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    def __init__(self, release_id: _Optional[str] = ...) -> None: ...

class ReleaseData(_message.Message):
    __slots__ = ("info", "batch", "attestation", "signature", "site_key")
    INFO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SITE_KEY_FIELD_NUMBER: _ClassVar[int]
    info: ReleaseInfo
    batch: bytes
    attestation: bytes
    signature: bytes
    site_key: bytes
    def __init__(self, info: _Optional[_Union[ReleaseInfo, _Mapping]] = ..., batch: _Optional[bytes] = ..., attestation: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., site_key: _Optional[bytes] = ...) -> None: ...
