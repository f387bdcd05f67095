from insitu._proto.v1 import identity_pb2 as _identity_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrolRequest(_message.Message):
    __slots__ = ("site_id", "join_token", "csr_pem")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    join_token: str
    csr_pem: str
    def __init__(self, site_id: _Optional[str] = ..., join_token: _Optional[str] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class EnrolResponse(_message.Message):
    __slots__ = ("certificate", "trust_domain", "model_signing_keys", "audit_signing_key")
    class ModelSigningKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIGNING_KEYS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    certificate: _identity_pb2.IssuedCertificate
    trust_domain: str
    model_signing_keys: _containers.ScalarMap[int, bytes]
    audit_signing_key: bytes
    def __init__(self, certificate: _Optional[_Union[_identity_pb2.IssuedCertificate, _Mapping]] = ..., trust_domain: _Optional[str] = ..., model_signing_keys: _Optional[_Mapping[int, bytes]] = ..., audit_signing_key: _Optional[bytes] = ...) -> None: ...
