from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class IssuedCertificate(_message.Message):
    __slots__ = ("spiffe_id", "cert_pem", "chain_pem", "ca_pem", "serial_hex", "not_after_unix")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    cert_pem: str
    chain_pem: str
    ca_pem: str
    serial_hex: str
    not_after_unix: int
    def __init__(self, spiffe_id: _Optional[str] = ..., cert_pem: _Optional[str] = ..., chain_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., serial_hex: _Optional[str] = ..., not_after_unix: _Optional[int] = ...) -> None: ...
