"""Site enrolment: make a key here (0600, never sent), send a CSR with the join token,
store the certificate Vault signed."""

from __future__ import annotations

from pathlib import Path

import grpc

from insitu._proto.v1 import enrolment_pb2, enrolment_pb2_grpc
from insitu.errors import ErrorCode, InsituError
from insitu.identity.credentials import (
    Credentials,
    build_csr,
    cert_info,
    generate_private_key,
    key_to_pem,
)
from insitu.identity.spiffe import SpiffeId, validate_name
from insitu.rpc.server import secure_channel
from insitu.settings import settings_to_toml
from site_node.settings import SITE_FILE, SiteSettings

__all__ = ["enrol"]


def enrol(
    *,
    enrol_target: str,
    coordinator: str,
    site_id: str,
    token: str,
    ca_pem: str,
    site_dir: Path,
    trust_domain: str,
    timeout_s: float = 30.0,
) -> SiteSettings:
    """Enrol this site and write ``site_dir`` (settings + tls/). Returns the settings."""
    validate_name(site_id, "site_id")
    key = generate_private_key()
    csr = build_csr(key, SpiffeId.site(trust_domain, site_id))
    channel = secure_channel(
        enrol_target, ca_pem=ca_pem, creds=None, server_name=f"coordinator.{trust_domain}"
    )
    try:
        reply = enrolment_pb2_grpc.EnrolmentStub(channel).Enrol(
            enrolment_pb2.EnrolRequest(site_id=site_id, join_token=token, csr_pem=csr),
            timeout=timeout_s,
        )
    except grpc.RpcError as e:
        raise InsituError(_code_for(e), f"enrolment refused: {e.details()}") from None
    finally:
        channel.close()
    issued = reply.certificate
    info = cert_info(issued.cert_pem)
    expected = SpiffeId.site(trust_domain, site_id)
    if info.spiffe_id != expected:
        raise InsituError(ErrorCode.INTEGRITY, "issued certificate names another identity")
    creds = Credentials(key_to_pem(key), issued.cert_pem, issued.chain_pem, issued.ca_pem)
    pin_trust(site_dir, dict(reply.model_signing_keys), reply.audit_signing_key)
    settings = SiteSettings(
        site_id=site_id, trust_domain=trust_domain, coordinator=coordinator, site_dir=site_dir
    )
    site_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds.save(settings.tls_dir)
    toml = settings_to_toml("site", settings).replace(f'site_dir = "{site_dir}"\n', "")
    (site_dir / SITE_FILE).write_text(toml)
    return settings


TRUST_DIR = "trust"


def pin_trust(site_dir: Path, model_keys: dict[int, bytes], audit_key: bytes) -> None:
    """Pin, at enrolment, the keys this site will trust for served models and for the
    coordinator's audit checkpoints (raw Ed25519 public keys, by transit key version)."""
    import base64
    import json

    if not model_keys or any(len(k) != 32 for k in model_keys.values()) or len(audit_key) != 32:
        raise InsituError(ErrorCode.INTEGRITY, "enrolment returned malformed signing keys")
    d = site_dir / TRUST_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    (d / "model-signing.json").write_text(
        json.dumps({str(v): base64.b64encode(k).decode() for v, k in sorted(model_keys.items())})
    )
    (d / "coordinator-audit.pub").write_text(base64.b64encode(audit_key).decode() + "\n")


def pinned_coordinator_audit_key(site_dir: Path) -> bytes:
    import base64

    path = site_dir / TRUST_DIR / "coordinator-audit.pub"
    if not path.exists():
        raise InsituError(ErrorCode.CONFIG, f"{path} is missing: re-enrol this site")
    return base64.b64decode(path.read_text().strip())


def pinned_model_keys(site_dir: Path) -> dict[int, bytes]:
    import base64
    import json

    path = site_dir / TRUST_DIR / "model-signing.json"
    if not path.exists():
        raise InsituError(ErrorCode.CONFIG, f"{path} is missing: re-enrol this site")
    return {int(v): base64.b64decode(k) for v, k in json.loads(path.read_text()).items()}


def _code_for(e: grpc.RpcError) -> ErrorCode:
    code = e.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ErrorCode.UNAUTHENTICATED
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ErrorCode.PERMISSION_DENIED
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ErrorCode.INVALID_ARGUMENT
    return ErrorCode.UNAVAILABLE
