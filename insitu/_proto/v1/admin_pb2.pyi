from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SiteStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SITE_STATUS_UNSPECIFIED: _ClassVar[SiteStatus]
    SITE_STATUS_ENROLLED: _ClassVar[SiteStatus]
    SITE_STATUS_REVOKED: _ClassVar[SiteStatus]
SITE_STATUS_UNSPECIFIED: SiteStatus
SITE_STATUS_ENROLLED: SiteStatus
SITE_STATUS_REVOKED: SiteStatus

class RoleBinding(_message.Message):
    __slots__ = ("principal", "role", "site", "org", "not_before_unix", "not_after_unix", "granted_by")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    GRANTED_BY_FIELD_NUMBER: _ClassVar[int]
    principal: str
    role: str
    site: str
    org: str
    not_before_unix: int
    not_after_unix: int
    granted_by: str
    def __init__(self, principal: _Optional[str] = ..., role: _Optional[str] = ..., site: _Optional[str] = ..., org: _Optional[str] = ..., not_before_unix: _Optional[int] = ..., not_after_unix: _Optional[int] = ..., granted_by: _Optional[str] = ...) -> None: ...

class RevokeRoleResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ("principal",)
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    principal: str
    def __init__(self, principal: _Optional[str] = ...) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("bindings",)
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    bindings: _containers.RepeatedCompositeFieldContainer[RoleBinding]
    def __init__(self, bindings: _Optional[_Iterable[_Union[RoleBinding, _Mapping]]] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("old_hash", "new_hash")
    OLD_HASH_FIELD_NUMBER: _ClassVar[int]
    NEW_HASH_FIELD_NUMBER: _ClassVar[int]
    old_hash: str
    new_hash: str
    def __init__(self, old_hash: _Optional[str] = ..., new_hash: _Optional[str] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("site_id", "ttl_seconds")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    ttl_seconds: int
    def __init__(self, site_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "site_id", "expires_unix")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    site_id: str
    expires_unix: int
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., site_id: _Optional[str] = ..., expires_unix: _Optional[int] = ...) -> None: ...

class Site(_message.Message):
    __slots__ = ("site_id", "spiffe_id", "status", "connected", "enrolled_unix", "last_seen_unix", "cert_serial_hex", "cert_not_after_unix", "session_id")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    CERT_NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    spiffe_id: str
    status: SiteStatus
    connected: bool
    enrolled_unix: int
    last_seen_unix: int
    cert_serial_hex: str
    cert_not_after_unix: int
    session_id: str
    def __init__(self, site_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., status: _Optional[_Union[SiteStatus, str]] = ..., connected: _Optional[bool] = ..., enrolled_unix: _Optional[int] = ..., last_seen_unix: _Optional[int] = ..., cert_serial_hex: _Optional[str] = ..., cert_not_after_unix: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSitesResponse(_message.Message):
    __slots__ = ("sites",)
    SITES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[Site]
    def __init__(self, sites: _Optional[_Iterable[_Union[Site, _Mapping]]] = ...) -> None: ...

class GetSiteRequest(_message.Message):
    __slots__ = ("site_id",)
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    def __init__(self, site_id: _Optional[str] = ...) -> None: ...

class RevokeSiteRequest(_message.Message):
    __slots__ = ("site_id", "reason")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    reason: str
    def __init__(self, site_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeSiteResponse(_message.Message):
    __slots__ = ("site", "revoked_certificates")
    SITE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    site: Site
    revoked_certificates: int
    def __init__(self, site: _Optional[_Union[Site, _Mapping]] = ..., revoked_certificates: _Optional[int] = ...) -> None: ...
