from insitu._proto.v1 import identity_pb2 as _identity_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SiteMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "task_reply", "job_decision")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TASK_REPLY_FIELD_NUMBER: _ClassVar[int]
    JOB_DECISION_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    task_reply: TaskChunk
    job_decision: JobDecision
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., task_reply: _Optional[_Union[TaskChunk, _Mapping]] = ..., job_decision: _Optional[_Union[JobDecision, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("site_id", "software_version", "replaces_session_id")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLACES_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    software_version: str
    replaces_session_id: str
    def __init__(self, site_id: _Optional[str] = ..., software_version: _Optional[str] = ..., replaces_session_id: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq", "sent_unix_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sent_unix_ms: int
    def __init__(self, seq: _Optional[int] = ..., sent_unix_ms: _Optional[int] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("welcome", "heartbeat_ack", "goodbye", "task", "job_proposal", "job_end")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    JOB_PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    JOB_END_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    heartbeat_ack: HeartbeatAck
    goodbye: Goodbye
    task: TaskChunk
    job_proposal: JobProposal
    job_end: JobEnd
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., task: _Optional[_Union[TaskChunk, _Mapping]] = ..., job_proposal: _Optional[_Union[JobProposal, _Mapping]] = ..., job_end: _Optional[_Union[JobEnd, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "site_id", "heartbeat_interval_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    site_id: str
    heartbeat_interval_ms: int
    def __init__(self, session_id: _Optional[str] = ..., site_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("seq", "received_unix_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    received_unix_ms: int
    def __init__(self, seq: _Optional[int] = ..., received_unix_ms: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("certificate",)
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    certificate: _identity_pb2.IssuedCertificate
    def __init__(self, certificate: _Optional[_Union[_identity_pb2.IssuedCertificate, _Mapping]] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("job_id", "message_id", "seq", "last", "metadata", "content", "error", "total_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    message_id: str
    seq: int
    last: bool
    metadata: bytes
    content: bytes
    error: bytes
    total_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., message_id: _Optional[str] = ..., seq: _Optional[int] = ..., last: _Optional[bool] = ..., metadata: _Optional[bytes] = ..., content: _Optional[bytes] = ..., error: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class DpSettings(_message.Message):
    __slots__ = ("noise_multiplier", "max_grad_norm", "epsilon", "delta")
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    noise_multiplier: float
    max_grad_norm: float
    epsilon: float
    delta: float
    def __init__(self, noise_multiplier: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class JobProposal(_message.Message):
    __slots__ = ("job_id", "code_sha256", "app_bundle", "dataset", "run_config", "dp", "rounds", "owner", "purpose", "partition_id", "num_partitions", "run_id")
    class RunConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    APP_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    code_sha256: str
    app_bundle: bytes
    dataset: str
    run_config: _containers.ScalarMap[str, str]
    dp: DpSettings
    rounds: int
    owner: str
    purpose: str
    partition_id: int
    num_partitions: int
    run_id: int
    def __init__(self, job_id: _Optional[str] = ..., code_sha256: _Optional[str] = ..., app_bundle: _Optional[bytes] = ..., dataset: _Optional[str] = ..., run_config: _Optional[_Mapping[str, str]] = ..., dp: _Optional[_Union[DpSettings, _Mapping]] = ..., rounds: _Optional[int] = ..., owner: _Optional[str] = ..., purpose: _Optional[str] = ..., partition_id: _Optional[int] = ..., num_partitions: _Optional[int] = ..., run_id: _Optional[int] = ...) -> None: ...

class JobDecision(_message.Message):
    __slots__ = ("job_id", "approved", "reason", "dataset_fingerprint")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DATASET_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    approved: bool
    reason: str
    dataset_fingerprint: str
    def __init__(self, job_id: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ..., dataset_fingerprint: _Optional[str] = ...) -> None: ...

class JobEnd(_message.Message):
    __slots__ = ("job_id", "outcome")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    outcome: str
    def __init__(self, job_id: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...
