"""Model deployments at a site, on the coordinator's request over the session: verify
the Vault-signed artifact with the key pinned at enrolment, then serve or canary it;
promote and roll back (rollback works even while the coordinator is unreachable, from
the local CLI). A refused or failed load leaves the serving version unchanged."""

from __future__ import annotations

import logging
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from insitu._proto.v1 import session_pb2
from insitu.errors import InsituError
from site_node.serving.artifact import ArtifactMetadata
from site_node.serving.service import ModelStatus, ServingRuntime

__all__ = ["SiteDeployments", "pinned_verifier"]

log = logging.getLogger(__name__)
Send = Callable[[session_pb2.SiteMessage], None]
Audit = Callable[[str, dict[str, str]], None]


def pinned_verifier(keys: dict[int, bytes]) -> Callable[[bytes, bytes], bool]:
    """Accept a signature by any pinned model-signing key version."""
    loaded = [Ed25519PublicKey.from_public_bytes(k) for k in keys.values()]

    def verify(message: bytes, signature: bytes) -> bool:
        for key in loaded:
            try:
                key.verify(signature, message)
                return True
            except InvalidSignature:
                continue
        return False

    return verify


def _result(
    request_id: str, status: ModelStatus | None, error: str = ""
) -> session_pb2.DeployResult:
    if status is None:
        return session_pb2.DeployResult(request_id=request_id, ok=False, error=error[:500])
    st = status.state
    return session_pb2.DeployResult(
        request_id=request_id,
        ok=True,
        serving_version=st.serving or 0,
        canary_version=st.canary or 0,
        canary_percent=st.canary_basis_points / 100,
    )


class SiteDeployments:
    def __init__(
        self,
        runtime: ServingRuntime,
        verify: Callable[[bytes, bytes], bool],
        send: Send,
        audit: Audit,
    ) -> None:
        self.runtime = runtime
        self.verify = verify
        self.send = send
        self.audit = audit

    def on_deploy(self, d: session_pb2.ModelDeploy) -> None:
        status, error = None, ""
        try:
            meta = ArtifactMetadata.from_json_unverified(d.artifact)
            status = self.runtime.deploy(
                d.model,
                d.version,
                d.onnx,
                meta,
                self.verify,
                config_yaml=d.config_yaml or None,
                canary_percent=d.canary_percent or None,
            )
        except InsituError as e:
            error = f"{e.code.value}: {e.detail}"
        except Exception as e:  # a broken model must not take the daemon down
            log.exception("deploy of %s v%d failed", d.model, d.version)
            error = f"internal: {type(e).__name__}"
        self.audit(
            "model.deploy",
            {
                "model": d.model,
                "version": str(d.version),
                "canary_percent": str(d.canary_percent),
                "ok": str(status is not None),
                "error": error[:200],
            },
        )
        self.send(session_pb2.SiteMessage(deploy_result=_result(d.request_id, status, error)))

    def on_control(self, c: session_pb2.ModelControl) -> None:
        status, error = None, ""
        try:
            if c.action == "promote":
                status = self.runtime.promote(c.model)
            elif c.action == "rollback":
                status = self.runtime.rollback(c.model)
            else:
                error = f"unknown action {c.action!r}"
        except InsituError as e:
            error = f"{e.code.value}: {e.detail}"
        self.audit(
            f"model.{c.action}" if c.action in ("promote", "rollback") else "model.control",
            {"model": c.model, "ok": str(status is not None), "error": error[:200]},
        )
        self.send(session_pb2.SiteMessage(deploy_result=_result(c.request_id, status, error)))
