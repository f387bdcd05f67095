"""The TLS 1.3 check fails closed: a connection that reports another version, or none,
is refused before its certificate is even read (#13)."""

from __future__ import annotations

from typing import Any

import pytest

from insitu.errors import ErrorCode, InsituError
from insitu.rpc.authn import Authenticator


class _Context:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


@pytest.mark.parametrize("version", [None, [b"TLSv1.2"], [b""], [b"TLSv1.3", b"TLSv1.2"]])
def test_anything_but_a_reported_tls_1_3_is_refused(version: list[bytes] | None) -> None:
    auth: dict[str, Any] = {"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nnot read\n"]}
    if version is not None:
        auth["ssl_tls_version"] = version
    with pytest.raises(InsituError) as e:
        Authenticator("test.insitu", None).from_context(_Context(auth))  # type: ignore[arg-type]
    assert e.value.code is ErrorCode.UNAUTHENTICATED
    assert "TLS 1.3" in e.value.detail
