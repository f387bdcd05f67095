from insitu._proto.v1 import admin_pb2 as _admin_pb2
from insitu._proto.v1 import identity_pb2 as _identity_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SiteMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "task_reply", "job_decision", "deploy_result", "feature_batch", "witness")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TASK_REPLY_FIELD_NUMBER: _ClassVar[int]
    JOB_DECISION_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_RESULT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_BATCH_FIELD_NUMBER: _ClassVar[int]
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    task_reply: TaskChunk
    job_decision: JobDecision
    deploy_result: DeployResult
    feature_batch: FeatureChunk
    witness: WitnessNote
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., task_reply: _Optional[_Union[TaskChunk, _Mapping]] = ..., job_decision: _Optional[_Union[JobDecision, _Mapping]] = ..., deploy_result: _Optional[_Union[DeployResult, _Mapping]] = ..., feature_batch: _Optional[_Union[FeatureChunk, _Mapping]] = ..., witness: _Optional[_Union[WitnessNote, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("site_id", "software_version", "replaces_session_id", "attestation_key", "audit_key", "witnessed_size", "active_job_ids")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLACES_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_KEY_FIELD_NUMBER: _ClassVar[int]
    AUDIT_KEY_FIELD_NUMBER: _ClassVar[int]
    WITNESSED_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    software_version: str
    replaces_session_id: str
    attestation_key: bytes
    audit_key: bytes
    witnessed_size: int
    active_job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, site_id: _Optional[str] = ..., software_version: _Optional[str] = ..., replaces_session_id: _Optional[str] = ..., attestation_key: _Optional[bytes] = ..., audit_key: _Optional[bytes] = ..., witnessed_size: _Optional[int] = ..., active_job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq", "sent_unix_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sent_unix_ms: int
    def __init__(self, seq: _Optional[int] = ..., sent_unix_ms: _Optional[int] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("welcome", "heartbeat_ack", "goodbye", "task", "job_proposal", "job_end", "model_deploy", "model_control", "authz_sync", "feature_ack", "pseudonym_key", "checkpoint_offer")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    JOB_PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    JOB_END_FIELD_NUMBER: _ClassVar[int]
    MODEL_DEPLOY_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONTROL_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_SYNC_FIELD_NUMBER: _ClassVar[int]
    FEATURE_ACK_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_KEY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_OFFER_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    heartbeat_ack: HeartbeatAck
    goodbye: Goodbye
    task: TaskChunk
    job_proposal: JobProposal
    job_end: JobEnd
    model_deploy: ModelDeploy
    model_control: ModelControl
    authz_sync: AuthzSync
    feature_ack: FeatureAck
    pseudonym_key: PseudonymKey
    checkpoint_offer: CheckpointOffer
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., task: _Optional[_Union[TaskChunk, _Mapping]] = ..., job_proposal: _Optional[_Union[JobProposal, _Mapping]] = ..., job_end: _Optional[_Union[JobEnd, _Mapping]] = ..., model_deploy: _Optional[_Union[ModelDeploy, _Mapping]] = ..., model_control: _Optional[_Union[ModelControl, _Mapping]] = ..., authz_sync: _Optional[_Union[AuthzSync, _Mapping]] = ..., feature_ack: _Optional[_Union[FeatureAck, _Mapping]] = ..., pseudonym_key: _Optional[_Union[PseudonymKey, _Mapping]] = ..., checkpoint_offer: _Optional[_Union[CheckpointOffer, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "site_id", "heartbeat_interval_ms", "active_job_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    site_id: str
    heartbeat_interval_ms: int
    active_job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., site_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., active_job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("job_id", "message_id", "seq", "last", "metadata", "content", "error", "total_bytes", "trace")
    class TraceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    message_id: str
    seq: int
    last: bool
    metadata: bytes
    content: bytes
    error: bytes
    total_bytes: int
    trace: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., message_id: _Optional[str] = ..., seq: _Optional[int] = ..., last: _Optional[bool] = ..., metadata: _Optional[bytes] = ..., content: _Optional[bytes] = ..., error: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., trace: _Optional[_Mapping[str, str]] = ...) -> None: ...

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

class ModelDeploy(_message.Message):
    __slots__ = ("request_id", "model", "version", "onnx", "artifact", "config_yaml", "canary_percent")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    version: int
    onnx: bytes
    artifact: bytes
    config_yaml: str
    canary_percent: float
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., onnx: _Optional[bytes] = ..., artifact: _Optional[bytes] = ..., config_yaml: _Optional[str] = ..., canary_percent: _Optional[float] = ...) -> None: ...

class ModelControl(_message.Message):
    __slots__ = ("request_id", "model", "action")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    action: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class DeployResult(_message.Message):
    __slots__ = ("request_id", "ok", "error", "serving_version", "canary_version", "canary_percent")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ok: bool
    error: str
    serving_version: int
    canary_version: int
    canary_percent: float
    def __init__(self, request_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., serving_version: _Optional[int] = ..., canary_version: _Optional[int] = ..., canary_percent: _Optional[float] = ...) -> None: ...

class ModelGrant(_message.Message):
    __slots__ = ("model", "principal")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    model: str
    principal: str
    def __init__(self, model: _Optional[str] = ..., principal: _Optional[str] = ...) -> None: ...

class AuthzSync(_message.Message):
    __slots__ = ("bindings", "grants", "revoked_serials", "as_of_unix", "model_owners")
    class ModelOwnersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_UNIX_FIELD_NUMBER: _ClassVar[int]
    MODEL_OWNERS_FIELD_NUMBER: _ClassVar[int]
    bindings: _containers.RepeatedCompositeFieldContainer[_admin_pb2.RoleBinding]
    grants: _containers.RepeatedCompositeFieldContainer[ModelGrant]
    revoked_serials: _containers.RepeatedScalarFieldContainer[str]
    as_of_unix: int
    model_owners: _containers.ScalarMap[str, str]
    def __init__(self, bindings: _Optional[_Iterable[_Union[_admin_pb2.RoleBinding, _Mapping]]] = ..., grants: _Optional[_Iterable[_Union[ModelGrant, _Mapping]]] = ..., revoked_serials: _Optional[_Iterable[str]] = ..., as_of_unix: _Optional[int] = ..., model_owners: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FeatureChunk(_message.Message):
    __slots__ = ("release_id", "seq", "last", "attestation", "signature", "content", "total_bytes", "job_id", "dataset")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    seq: int
    last: bool
    attestation: bytes
    signature: bytes
    content: bytes
    total_bytes: int
    job_id: str
    dataset: str
    def __init__(self, release_id: _Optional[str] = ..., seq: _Optional[int] = ..., last: _Optional[bool] = ..., attestation: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., content: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., job_id: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...

class FeatureAck(_message.Message):
    __slots__ = ("release_id", "ok", "error")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    ok: bool
    error: str
    def __init__(self, release_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class PseudonymKey(_message.Message):
    __slots__ = ("key_id", "key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key: bytes
    def __init__(self, key_id: _Optional[str] = ..., key: _Optional[bytes] = ...) -> None: ...

class WitnessNote(_message.Message):
    __slots__ = ("kind", "note", "size")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    note: str
    size: int
    def __init__(self, kind: _Optional[str] = ..., note: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CheckpointOffer(_message.Message):
    __slots__ = ("note", "from_size", "proof")
    NOTE_FIELD_NUMBER: _ClassVar[int]
    FROM_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    note: str
    from_size: int
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, note: _Optional[str] = ..., from_size: _Optional[int] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...
