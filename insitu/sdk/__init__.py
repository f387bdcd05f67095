"""insitu's client SDK.

Example::

    from insitu.sdk import Client
    with Client("127.0.0.1:7443", cert="c.pem", key="k.pem", ca="ca.pem",
                server_name="coordinator.demo.insitu") as c:
        c.health()
"""

from insitu.sdk.aio import AsyncClient
from insitu.sdk.client import Client, JoinToken, SiteInfo
from insitu.sdk.errors import (
    InsituRpcError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "Client",
    "InsituRpcError",
    "InvalidArgument",
    "JoinToken",
    "NotFound",
    "PermissionDenied",
    "SiteInfo",
    "Unauthenticated",
    "Unavailable",
]
