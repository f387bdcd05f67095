from insitu._proto.v1 import session_pb2 as _session_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_AWAITING_APPROVAL: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_REFUSED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_INTERRUPTED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_AWAITING_APPROVAL: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_REFUSED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_INTERRUPTED: JobState

class JobLogsRequest(_message.Message):
    __slots__ = ("job_id", "tail_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TAIL_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tail_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., tail_bytes: _Optional[int] = ...) -> None: ...

class JobLogs(_message.Message):
    __slots__ = ("data", "truncated")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    truncated: bool
    def __init__(self, data: _Optional[bytes] = ..., truncated: _Optional[bool] = ...) -> None: ...

class DeployModelRequest(_message.Message):
    __slots__ = ("name", "version", "site_id", "canary_percent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    site_id: str
    canary_percent: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., site_id: _Optional[str] = ..., canary_percent: _Optional[float] = ...) -> None: ...

class ModelControlRequest(_message.Message):
    __slots__ = ("name", "site_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    site_id: str
    def __init__(self, name: _Optional[str] = ..., site_id: _Optional[str] = ...) -> None: ...

class DeploymentStatus(_message.Message):
    __slots__ = ("site_id", "model", "serving_version", "canary_version", "canary_percent")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    model: str
    serving_version: int
    canary_version: int
    canary_percent: float
    def __init__(self, site_id: _Optional[str] = ..., model: _Optional[str] = ..., serving_version: _Optional[int] = ..., canary_version: _Optional[int] = ..., canary_percent: _Optional[float] = ...) -> None: ...

class GrantModelRequest(_message.Message):
    __slots__ = ("name", "principal")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    principal: str
    def __init__(self, name: _Optional[str] = ..., principal: _Optional[str] = ...) -> None: ...

class GrantModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteDataset(_message.Message):
    __slots__ = ("site_id", "dataset")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    dataset: str
    def __init__(self, site_id: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("app_bundle", "code_sha256", "targets", "rounds", "strategy", "run_config", "min_sites", "round_timeout_s", "dp", "purpose", "model_name")
    class RunConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    APP_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MIN_SITES_FIELD_NUMBER: _ClassVar[int]
    ROUND_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    app_bundle: bytes
    code_sha256: str
    targets: _containers.RepeatedCompositeFieldContainer[SiteDataset]
    rounds: int
    strategy: str
    run_config: _containers.ScalarMap[str, str]
    min_sites: int
    round_timeout_s: int
    dp: _session_pb2.DpSettings
    purpose: str
    model_name: str
    def __init__(self, app_bundle: _Optional[bytes] = ..., code_sha256: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[SiteDataset, _Mapping]]] = ..., rounds: _Optional[int] = ..., strategy: _Optional[str] = ..., run_config: _Optional[_Mapping[str, str]] = ..., min_sites: _Optional[int] = ..., round_timeout_s: _Optional[int] = ..., dp: _Optional[_Union[_session_pb2.DpSettings, _Mapping]] = ..., purpose: _Optional[str] = ..., model_name: _Optional[str] = ...) -> None: ...

class SiteApproval(_message.Message):
    __slots__ = ("site_id", "decided", "approved", "reason")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    decided: bool
    approved: bool
    reason: str
    def __init__(self, site_id: _Optional[str] = ..., decided: _Optional[bool] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round", "sites_ok", "sites_failed", "metrics", "wall_seconds", "phase", "site_errors")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SITES_OK_FIELD_NUMBER: _ClassVar[int]
    SITES_FAILED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SITE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    round: int
    sites_ok: _containers.RepeatedScalarFieldContainer[str]
    sites_failed: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    wall_seconds: float
    phase: str
    site_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., sites_ok: _Optional[_Iterable[str]] = ..., sites_failed: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., wall_seconds: _Optional[float] = ..., phase: _Optional[str] = ..., site_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "code_sha256", "state", "targets", "approvals", "rounds", "current_round", "owner", "model_name", "model_version", "error", "history", "strategy", "fix", "submitted_unix", "finished_unix")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    FIX_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    code_sha256: str
    state: JobState
    targets: _containers.RepeatedCompositeFieldContainer[SiteDataset]
    approvals: _containers.RepeatedCompositeFieldContainer[SiteApproval]
    rounds: int
    current_round: int
    owner: str
    model_name: str
    model_version: str
    error: str
    history: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    strategy: str
    fix: str
    submitted_unix: int
    finished_unix: int
    def __init__(self, job_id: _Optional[str] = ..., code_sha256: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., targets: _Optional[_Iterable[_Union[SiteDataset, _Mapping]]] = ..., approvals: _Optional[_Iterable[_Union[SiteApproval, _Mapping]]] = ..., rounds: _Optional[int] = ..., current_round: _Optional[int] = ..., owner: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., error: _Optional[str] = ..., history: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ..., strategy: _Optional[str] = ..., fix: _Optional[str] = ..., submitted_unix: _Optional[int] = ..., finished_unix: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("snapshot", "round")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    snapshot: Job
    round: RoundSummary
    def __init__(self, snapshot: _Optional[_Union[Job, _Mapping]] = ..., round: _Optional[_Union[RoundSummary, _Mapping]] = ...) -> None: ...

class ModelLineage(_message.Message):
    __slots__ = ("job_id", "code_sha256", "rounds", "sites", "dataset_fingerprints", "epsilon_spent", "metrics", "strategy")
    class DatasetFingerprintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    code_sha256: str
    rounds: int
    sites: _containers.RepeatedScalarFieldContainer[str]
    dataset_fingerprints: _containers.ScalarMap[str, str]
    epsilon_spent: float
    metrics: _containers.ScalarMap[str, float]
    strategy: str
    def __init__(self, job_id: _Optional[str] = ..., code_sha256: _Optional[str] = ..., rounds: _Optional[int] = ..., sites: _Optional[_Iterable[str]] = ..., dataset_fingerprints: _Optional[_Mapping[str, str]] = ..., epsilon_spent: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., strategy: _Optional[str] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "version", "owner", "created_unix", "lineage", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    owner: str
    created_unix: int
    lineage: ModelLineage
    sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., owner: _Optional[str] = ..., created_unix: _Optional[int] = ..., lineage: _Optional[_Union[ModelLineage, _Mapping]] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ModelArtifact(_message.Message):
    __slots__ = ("summary", "state", "onnx", "manifest", "signature", "key_version")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    summary: ModelSummary
    state: bytes
    onnx: bytes
    manifest: bytes
    signature: bytes
    key_version: int
    def __init__(self, summary: _Optional[_Union[ModelSummary, _Mapping]] = ..., state: _Optional[bytes] = ..., onnx: _Optional[bytes] = ..., manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_version: _Optional[int] = ...) -> None: ...
