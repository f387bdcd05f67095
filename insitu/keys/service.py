"""KeyService: the only thing in insitu that talks to Vault.

PKI (sign CSRs, revoke, verified CRL), transit (Ed25519 signatures that verify offline,
AES-GCM wrapped data keys, rotation by rewrap) and KV v2. Every HTTP call has a timeout
and every failure is an :class:`InsituError` whose detail carries no secret.

Example::

    keys = KeyService.from_approle("http://127.0.0.1:8200", role_id, secret_id)
    issued = keys.sign_csr("site", csr_pem, uri_sans=["spiffe://demo.insitu/site/a"],
                           ttl_seconds=3600)
    version, sig = keys.sign_with_version("audit-signing", note_body)
    assert keys.verify("audit-signing", note_body, sig)
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hvac
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu.errors import ErrorCode, InsituError
from insitu.keys._vault import DEFAULT_TIMEOUT_S, VaultSession
from insitu.keys.bootstrap import KV_MOUNT, PKI_INT_MOUNT, PKI_ROOT_MOUNT, TRANSIT_MOUNT
from insitu.keys.pki import (
    IssuedCert,
    crl_pem_to_der,
    is_self_signed,
    pem_certificates,
    serial_to_vault,
    verified_revoked_serials,
)

__all__ = ["PKI_ROLES", "DataKey", "KeyService"]

PKI_ROLES = frozenset({"site", "user", "service"})

_TRANSIT_VALUE = re.compile(r"^vault:v([1-9][0-9]*):([A-Za-z0-9+/]+={0,2})$")
_KEY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_KV_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_SAN_FORBIDDEN = frozenset(",\n\r\t\x00 ")
_MAX_CSR_CHARS = 16384
_DATA_KEY_BYTES = 32
_PUBKEY_REFRESH_S = 30.0


@dataclass(frozen=True, repr=False)
class DataKey:
    """A fresh AES-256 key: ``plaintext`` for local use, ``wrapped`` (transit ciphertext)
    to store beside the data. The repr never shows the plaintext."""

    plaintext: bytes = field(compare=False)
    wrapped: str

    def __repr__(self) -> str:
        return f"DataKey(wrapped={self.wrapped[:12]}..., plaintext=<{len(self.plaintext)} bytes>)"


class KeyService:
    """PKI, transit and KV operations over one authenticated hvac client.

    Build it with :meth:`from_token` or :meth:`from_approle`; ``KeyService(client)`` uses a
    caller-configured client as is (its timeout included) and never re-authenticates.
    """

    def __init__(self, client: hvac.Client) -> None:
        self._vault = VaultSession(client)
        self._pubkeys: dict[str, tuple[float, dict[int, bytes]]] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def from_token(
        cls,
        address: str,
        token: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        verify: bool | str = True,
    ) -> KeyService:
        """A KeyService using a fixed token (the dev server's root token, tests)."""
        return cls(hvac.Client(url=address, token=token, timeout=timeout_s, verify=verify))

    @classmethod
    def from_approle(
        cls,
        address: str,
        role_id: str,
        secret_id: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        verify: bool | str = True,
    ) -> KeyService:
        """Log in with AppRole now; log in again once whenever a call is refused (403),
        which is how Vault reports an expired token."""
        client = hvac.Client(url=address, timeout=timeout_s, verify=verify)

        def login() -> None:
            client.auth.approle.login(role_id=role_id, secret_id=secret_id)

        service = cls(client)
        service._vault = VaultSession(client, login)
        try:
            service._vault.relogin("AppRole login")
        except InsituError as exc:
            if exc.code is ErrorCode.PERMISSION_DENIED:
                raise InsituError(
                    ErrorCode.PERMISSION_DENIED, "AppRole login refused (bad role id or secret id)"
                ) from None
            raise
        return service

    @property
    def address(self) -> str:
        return self._vault.address

    # ---------------------------------------------------------------- PKI

    def sign_csr(
        self,
        role: str,
        csr_pem: str,
        *,
        uri_sans: Sequence[str],
        dns_sans: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        common_name: str | None = None,
        ttl_seconds: int,
    ) -> IssuedCert:
        """Have ``pki_int`` sign ``csr_pem`` under ``role`` with exactly the SANs given.

        The CSR's own subject and SANs are ignored (the roles say so); the role decides
        which SANs are allowed and Vault refuses the rest (INVALID_ARGUMENT).
        """
        if role not in PKI_ROLES:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"unknown PKI role; expected one of {sorted(PKI_ROLES)}"
            )
        if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool) or ttl_seconds <= 0:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "ttl_seconds must be a positive int")
        csr = _parse_csr(csr_pem)
        uris = _check_sans("uri_sans", uri_sans)
        if not uris:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, "at least one URI SAN (SPIFFE id) is required"
            )
        dns = _check_sans("dns_sans", dns_sans)
        ips = [str(ipaddress.ip_address(ip)) for ip in _check_sans("ip_sans", ip_sans, ip=True)]
        params: dict[str, Any] = {
            "csr": csr_pem,
            "uri_sans": uris,
            "ttl": f"{ttl_seconds}s",
            "format": "pem",
            # A CN must never turn into a DNS SAN the caller did not ask for.
            "exclude_cn_from_sans": True,
        }
        if dns:
            params["alt_names"] = ",".join(dns)  # safe: commas rejected above
        if ips:
            params["ip_sans"] = ips
        if common_name is not None:
            if (
                not isinstance(common_name, str)
                or not 0 < len(common_name) <= 64
                or not common_name.isprintable()
            ):
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT, "common_name must be 1-64 printable characters"
                )
            params["common_name"] = common_name
        reply = _data(
            self._vault.write(
                f"sign CSR with role {role}", f"{PKI_INT_MOUNT}/sign/{role}", **params
            )
        )
        return _issued_cert(reply, csr, uris)

    def revoke(self, serial: int) -> None:
        """Revoke the ``pki_int`` certificate with this serial; the CRL is rebuilt at once."""
        vault_serial = serial_to_vault(serial)
        try:
            self._vault.write(
                "revoke certificate", f"{PKI_INT_MOUNT}/revoke", serial_number=vault_serial
            )
        except InsituError as exc:
            if exc.code is ErrorCode.INVALID_ARGUMENT and "not found" in exc.detail:
                raise InsituError(
                    ErrorCode.NOT_FOUND, f"no certificate with serial {vault_serial}"
                ) from None
            raise

    def crl_der(self) -> bytes:
        """The current ``pki_int`` CRL, DER-encoded, exactly as Vault serves it."""
        reply = _data(self._vault.read("read CRL", f"{PKI_INT_MOUNT}/cert/crl"))
        pem = reply.get("certificate")
        if not isinstance(pem, str) or not pem:
            raise InsituError(ErrorCode.VAULT_UNAVAILABLE, "Vault returned no CRL")
        return crl_pem_to_der(pem)

    def revoked_serials(self, *, now: datetime | None = None) -> frozenset[int]:
        """Serials on the ``pki_int`` CRL, after verifying its signature against the
        issuing CA. A CRL past its next-update time is re-signed once; if it is still
        stale, this raises (fail closed) rather than trust an old list."""
        issuer = pem_certificates(self.issuing_chain_pem())[0]
        moment = now or datetime.now(UTC)
        serials, next_update = verified_revoked_serials(self.crl_der(), issuer)
        if next_update is not None and next_update <= moment:
            self._vault.read("re-sign expired CRL", f"{PKI_INT_MOUNT}/crl/rotate")
            serials, next_update = verified_revoked_serials(self.crl_der(), issuer)
            if next_update is not None and next_update <= moment:
                raise InsituError(ErrorCode.VAULT_UNAVAILABLE, "Vault serves an expired CRL")
        return serials

    def ca_bundle_pem(self) -> str:
        """The federation root CA (the trust anchor for every TLS peer)."""
        return _cert_field(
            self._vault.read("read root CA", f"{PKI_ROOT_MOUNT}/cert/ca"), "certificate"
        )

    def issuing_chain_pem(self) -> str:
        """The issuing CA certificate(s) below the root, leaf side first."""
        reply = self._vault.read("read issuing chain", f"{PKI_INT_MOUNT}/cert/ca_chain")
        pem = _cert_field(reply, "ca_chain")
        certs = [c for c in pem_certificates(pem) if not is_self_signed(c)]
        if not certs:
            raise InsituError(ErrorCode.CONFIG, f"{PKI_INT_MOUNT}/ has no intermediate CA")
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    # ---------------------------------------------------------------- transit signing

    def sign_with_version(self, key: str, data: bytes) -> tuple[int, bytes]:
        """Sign ``data`` with transit key ``key``: ``(key version, raw signature)``.

        For an Ed25519 key the raw signature is the plain 64-byte RFC 8032 signature of
        ``data`` itself (no prehash), so :meth:`verify` and any Ed25519 library check it.
        """
        name = _key_name(key)
        reply = _data(
            self._vault.write(
                f"sign with transit key {name}",
                f"{TRANSIT_MOUNT}/sign/{name}",
                input=base64.b64encode(data).decode(),
            )
        )
        return _split_transit_value(reply.get("signature"), "signature")

    def sign(self, key: str, data: bytes) -> bytes:
        """The raw signature of :meth:`sign_with_version`."""
        return self.sign_with_version(key, data)[1]

    def public_keys(self, key: str) -> dict[int, bytes]:
        """Raw 32-byte Ed25519 public keys of ``key`` by version, from Vault (refreshes the
        cache). Versions below the key's ``min_decryption_version`` are left out: Vault
        would refuse to verify with them, so offline verification refuses them too."""
        name = _key_name(key)
        reply = _data(self._vault.read(f"read transit key {name}", f"{TRANSIT_MOUNT}/keys/{name}"))
        if not reply:
            raise InsituError(ErrorCode.NOT_FOUND, f"transit key {name} does not exist")
        if reply.get("type") != "ed25519":
            raise InsituError(ErrorCode.INVALID_ARGUMENT, f"transit key {name} is not ed25519")
        floor = int(reply.get("min_decryption_version") or 1)
        keys: dict[int, bytes] = {}
        for version_text, info in (reply.get("keys") or {}).items():
            version = int(version_text)
            if version < floor:
                continue
            try:
                raw = base64.b64decode(info["public_key"], validate=True)
            except (KeyError, TypeError, binascii.Error):
                raise InsituError(
                    ErrorCode.INTERNAL, f"transit key {name} v{version}: bad public key"
                ) from None
            if len(raw) != 32:
                raise InsituError(
                    ErrorCode.INTERNAL, f"transit key {name} v{version}: not 32 bytes"
                )
            keys[version] = raw
        with self._cache_lock:
            self._pubkeys[name] = (time.monotonic(), dict(keys))
        return keys

    def public_key(self, key: str) -> bytes:
        """The public key of the latest version of ``key``."""
        keys = self.public_keys(key)
        if not keys:
            raise InsituError(ErrorCode.NOT_FOUND, f"transit key {key} has no usable version")
        return keys[max(keys)]

    def verify(
        self, key: str, data: bytes, signature: bytes, *, version: int | None = None
    ) -> bool:
        """Check a raw Ed25519 signature offline with ``key``'s public keys.

        With ``version``, only that version counts; without, any usable version does.
        Public keys are cached; the cache is refreshed (at most every 30 s) on a miss so a
        signature made after a rotation still verifies.
        """
        name = _key_name(key)
        if len(signature) != 64:
            return False
        keys = self._cached_public_keys(name, force=False)
        if _verify_any(keys, version, data, signature):
            return True
        with self._cache_lock:
            fetched_at = self._pubkeys.get(name, (0.0, {}))[0]
        if time.monotonic() - fetched_at < _PUBKEY_REFRESH_S and (
            version is None or version in keys
        ):
            return False
        return _verify_any(self._cached_public_keys(name, force=True), version, data, signature)

    def _cached_public_keys(self, name: str, *, force: bool) -> dict[int, bytes]:
        with self._cache_lock:
            cached = self._pubkeys.get(name)
        if cached is not None and not force:
            return cached[1]
        return self.public_keys(name)

    # ---------------------------------------------------------------- data keys

    def generate_data_key(self, key: str = "data-wrapping") -> DataKey:
        """A new random AES-256 key, returned in plaintext and wrapped by transit ``key``."""
        name = _key_name(key)
        reply = _data(
            self._vault.write(
                f"generate data key under {name}",
                f"{TRANSIT_MOUNT}/datakey/plaintext/{name}",
                bits=_DATA_KEY_BYTES * 8,
            )
        )
        plaintext = _b64_field(reply, "plaintext")
        if len(plaintext) != _DATA_KEY_BYTES:
            raise InsituError(ErrorCode.INTERNAL, "Vault returned a data key of the wrong size")
        wrapped = reply.get("ciphertext")
        _split_transit_value(wrapped, "ciphertext")
        assert isinstance(wrapped, str)
        return DataKey(plaintext=plaintext, wrapped=wrapped)

    def unwrap(self, key: str, wrapped: str) -> bytes:
        """The plaintext of a data key wrapped by transit ``key``."""
        name = _key_name(key)
        _split_transit_value(wrapped, "wrapped data key")
        reply = _data(
            self._vault.write(
                f"unwrap data key under {name}",
                f"{TRANSIT_MOUNT}/decrypt/{name}",
                ciphertext=wrapped,
            )
        )
        return _b64_field(reply, "plaintext")

    def rewrap(self, key: str, wrapped: str) -> str:
        """Re-encrypt a wrapped data key under the latest version of ``key`` (no plaintext
        leaves Vault)."""
        name = _key_name(key)
        _split_transit_value(wrapped, "wrapped data key")
        reply = _data(
            self._vault.write(
                f"rewrap data key under {name}",
                f"{TRANSIT_MOUNT}/rewrap/{name}",
                ciphertext=wrapped,
            )
        )
        new = reply.get("ciphertext")
        _split_transit_value(new, "ciphertext")
        assert isinstance(new, str)
        return new

    def rotate(self, key: str) -> None:
        """Add a new version to transit ``key``; old versions still decrypt and verify."""
        name = _key_name(key)
        self._vault.write(f"rotate transit key {name}", f"{TRANSIT_MOUNT}/keys/{name}/rotate")
        with self._cache_lock:
            self._pubkeys.pop(name, None)

    def key_version(self, key: str) -> int:
        """The latest version of transit ``key``."""
        name = _key_name(key)
        reply = _data(self._vault.read(f"read transit key {name}", f"{TRANSIT_MOUNT}/keys/{name}"))
        if not reply:
            raise InsituError(ErrorCode.NOT_FOUND, f"transit key {name} does not exist")
        return int(reply["latest_version"])

    # ---------------------------------------------------------------- KV v2

    def kv_put(self, path: str, data: Mapping[str, str]) -> None:
        """Write a new version of the secret at ``kv/<path>`` (string values only)."""
        clean = _kv_path(path)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "KV keys and values must be strings")
        self._vault.write(f"write KV {clean}", f"{KV_MOUNT}/data/{clean}", data=dict(data))

    def kv_get(self, path: str) -> dict[str, str] | None:
        """The latest version of the secret at ``kv/<path>``, or None if absent/deleted."""
        clean = _kv_path(path)
        reply = self._vault.read(f"read KV {clean}", f"{KV_MOUNT}/data/{clean}")
        if reply is None:
            return None
        inner = _data(reply).get("data")
        if not isinstance(inner, dict):
            return None
        return {str(k): str(v) for k, v in inner.items()}


# -------------------------------------------------------------------- helpers


def _data(reply: dict[str, Any] | None) -> dict[str, Any]:
    if reply is None:
        return {}
    data = reply.get("data")
    return data if isinstance(data, dict) else {}


def _key_name(key: str) -> str:
    # Names are interpolated into URL paths: refuse anything that could walk elsewhere.
    if not isinstance(key, str) or not _KEY_NAME.fullmatch(key):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, "transit key name must match [a-z0-9][a-z0-9_-]*"
        )
    return key


def _kv_path(path: str) -> str:
    segments = path.split("/") if isinstance(path, str) else []
    if not segments or not all(_KV_SEGMENT.fullmatch(s) for s in segments):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, "KV path must be '/'-separated names of [A-Za-z0-9._-]"
        )
    return path


def _check_sans(what: str, values: Sequence[str], *, ip: bool = False) -> list[str]:
    if isinstance(values, str):
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{what} must be a sequence, not a string")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value or len(value) > 2048:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"{what} entries must be non-empty strings"
            )
        if _SAN_FORBIDDEN.intersection(value):
            # Vault splits some parameters on commas: one value must never become two.
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"{what} entries must not contain commas or spaces"
            )
        if ip:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT, f"{what}: not an IP address"
                ) from None
        out.append(value)
    return out


def _parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """Parse and self-verify a CSR locally, so garbage never reaches Vault and errors never
    quote it."""
    if not isinstance(csr_pem, str) or not csr_pem.strip():
        raise InsituError(ErrorCode.MALFORMED_CSR, "CSR is empty")
    if len(csr_pem) > _MAX_CSR_CHARS:
        raise InsituError(ErrorCode.MALFORMED_CSR, f"CSR exceeds {_MAX_CSR_CHARS} characters")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise InsituError(
            ErrorCode.MALFORMED_CSR, "not a PEM PKCS#10 certificate request"
        ) from None
    if not csr.is_signature_valid:
        raise InsituError(ErrorCode.MALFORMED_CSR, "CSR self-signature does not verify")
    return csr


def _issued_cert(
    reply: dict[str, Any], csr: x509.CertificateSigningRequest, uris: list[str]
) -> IssuedCert:
    cert_pem = reply.get("certificate")
    if not isinstance(cert_pem, str):
        raise InsituError(ErrorCode.INTERNAL, "Vault sign reply lacks a certificate")
    certs = pem_certificates(cert_pem)
    if len(certs) != 1:
        raise InsituError(ErrorCode.INTERNAL, "Vault sign reply holds no single certificate")
    cert = certs[0]
    # Post-conditions: the certificate binds the CSR's key to the SPIFFE ids asked for.
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != csr.public_key().public_bytes(*spki):
        raise InsituError(ErrorCode.INTEGRITY, "issued certificate does not carry the CSR's key")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        got = set(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        got = set()
    if got != set(uris):
        raise InsituError(
            ErrorCode.INTEGRITY, "issued certificate URI SANs differ from the request"
        )
    chain_items = reply.get("ca_chain") or [reply.get("issuing_ca") or ""]
    chain = [
        c for c in pem_certificates("\n".join(str(x) for x in chain_items)) if not is_self_signed(c)
    ]
    chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
    return IssuedCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        chain_pem=chain_pem,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
    )


def _cert_field(reply: dict[str, Any] | None, name: str) -> str:
    value = _data(reply).get(name)
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value)
    if not isinstance(value, str) or "BEGIN CERTIFICATE" not in value:
        raise InsituError(ErrorCode.CONFIG, f"Vault has no CA certificate ({name}); run bootstrap")
    return value.strip() + "\n"


def _split_transit_value(value: object, what: str) -> tuple[int, bytes]:
    """``vault:v<N>:<base64>`` -> ``(N, bytes)``; the prefix OpenBao keeps for Vault compat."""
    match = _TRANSIT_VALUE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{what} is not a vault:v<N>:<base64> value")
    try:
        return int(match.group(1)), base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{what} has invalid base64") from None


def _b64_field(reply: dict[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(reply[name], validate=True)
    except (KeyError, TypeError, binascii.Error):
        raise InsituError(ErrorCode.INTERNAL, f"Vault reply lacks a valid {name}") from None


def _verify_any(
    keys: Mapping[int, bytes], version: int | None, data: bytes, signature: bytes
) -> bool:
    candidates = [keys[version]] if version is not None and version in keys else []
    if version is None:
        candidates = list(keys.values())
    for raw in candidates:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
            return True
        except InvalidSignature:
            continue
    return False


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Vault call latency and errors, per KeyService operation, on the process metrics."""
    from functools import wraps

    from insitu.telemetry.metrics import process_metrics

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with process_metrics().vault_call(name):
            return fn(*args, **kwargs)

    return wrapper


for _op, _method in {
    "sign_csr": "sign_csr", "revoke": "revoke", "crl": "revoked_serials",
    "ca_bundle": "ca_bundle_pem", "sign": "sign_with_version", "verify": "verify",
    "public_keys": "public_keys", "generate_data_key": "generate_data_key", "unwrap": "unwrap",
    "rewrap": "rewrap", "rotate": "rotate", "key_version": "key_version", "kv_put": "kv_put",
    "kv_get": "kv_get",
}.items():
    setattr(KeyService, _method, _timed(_op, getattr(KeyService, _method)))
