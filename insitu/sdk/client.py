"""The insitu client SDK (sync). See :mod:`insitu.sdk.aio` for the asyncio twin.

Every call has a deadline; idempotent reads retry on UNAVAILABLE (gRPC retry policy);
failures raise typed :mod:`insitu.sdk.errors`.

Example::

    with Client("127.0.0.1:7443", cert="admin/cert.pem", key="admin/key.pem",
                ca="admin/ca.pem", server_name="coordinator.demo.insitu") as c:
        print(c.health())
        for site in c.list_sites():
            print(site.site_id, site.connected)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from insitu._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    session_pb2,
)
from insitu.identity.credentials import Credentials
from insitu.rpc.methods import METHODS
from insitu.rpc.server import secure_channel
from insitu.sdk.errors import IntegrityError, from_rpc_error
from insitu.telemetry.tracing import TracingClientInterceptor

__all__ = ["Client", "JoinToken", "ModelArtifact", "SiteInfo", "retry_service_config"]

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0


def retry_service_config() -> str:
    """gRPC service config: retry idempotent methods (from the method table) on UNAVAILABLE."""
    names = []
    for full, rule in METHODS.items():
        if rule.idempotent:
            service, method = full.lstrip("/").split("/")
            names.append({"service": service, "method": method})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


@dataclass(frozen=True)
class SiteInfo:
    site_id: str
    spiffe_id: str
    status: str
    connected: bool
    enrolled_unix: int
    last_seen_unix: int
    cert_serial_hex: str
    cert_not_after_unix: int
    session_id: str

    @classmethod
    def from_proto(cls, s: admin_pb2.Site) -> SiteInfo:
        status = {
            admin_pb2.SITE_STATUS_ENROLLED: "enrolled",
            admin_pb2.SITE_STATUS_REVOKED: "revoked",
        }.get(s.status, "unknown")
        return cls(
            s.site_id,
            s.spiffe_id,
            status,
            s.connected,
            s.enrolled_unix,
            s.last_seen_unix,
            s.cert_serial_hex,
            s.cert_not_after_unix,
            s.session_id,
        )


@dataclass(frozen=True)
class JoinToken:
    token: str
    token_id: str
    site_id: str
    expires_unix: int

    def __repr__(self) -> str:
        return f"JoinToken(token_id={self.token_id!r}, site_id={self.site_id!r})"


def load_credentials(cert: str | Path, key: str | Path, ca: str | Path) -> Credentials:
    cert_text = Path(cert).read_text()
    chain_path = Path(cert).with_name("chain.pem")
    chain = chain_path.read_text() if chain_path.exists() else ""
    return Credentials(Path(key).read_bytes(), cert_text, chain, Path(ca).read_text())


class Client:
    """Synchronous client of the coordinator's mTLS API."""

    def __init__(
        self,
        target: str,
        cert: str | Path,
        key: str | Path,
        ca: str | Path,
        *,
        server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._creds = load_credentials(cert, key, ca)
        self.timeout = timeout
        self._raw_channel = secure_channel(
            target,
            ca_pem=self._creds.ca_pem,
            creds=self._creds,
            server_name=server_name,
            extra_options=[
                ("grpc.service_config", retry_service_config()),
                ("grpc.enable_retries", 1),
            ],
        )
        # Trace context travels with every call (W3C traceparent; nothing else).
        self._channel = grpc.intercept_channel(self._raw_channel, TracingClientInterceptor())
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobsStub(self._channel)
        self._models = jobs_pb2_grpc.ModelsStub(self._channel)
        self._features = features_pb2_grpc.FeaturesStub(self._channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The serving status name of ``service`` ("" is the whole server)."""
        r = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))

    def list_sites(self, *, timeout: float | None = None) -> list[SiteInfo]:
        r = self._call(self._admin.ListSites, admin_pb2.ListSitesRequest(), timeout)
        return [SiteInfo.from_proto(s) for s in r.sites]

    def get_site(self, site_id: str, *, timeout: float | None = None) -> SiteInfo:
        r = self._call(self._admin.GetSite, admin_pb2.GetSiteRequest(site_id=site_id), timeout)
        return SiteInfo.from_proto(r)

    def create_join_token(
        self, site_id: str, ttl_seconds: int = 3600, *, timeout: float | None = None
    ) -> JoinToken:
        r = self._call(
            self._admin.CreateJoinToken,
            admin_pb2.CreateJoinTokenRequest(site_id=site_id, ttl_seconds=ttl_seconds),
            timeout,
        )
        return JoinToken(r.token, r.token_id, r.site_id, r.expires_unix)

    def revoke_site(
        self, site_id: str, reason: str = "", *, timeout: float | None = None
    ) -> tuple[SiteInfo, int]:
        r = self._call(
            self._admin.RevokeSite,
            admin_pb2.RevokeSiteRequest(site_id=site_id, reason=reason),
            timeout,
        )
        return SiteInfo.from_proto(r.site), r.revoked_certificates

    # -- roles and policy ------------------------------------------------------------

    def grant_role(
        self,
        principal: str,
        role: str,
        *,
        site: str = "",
        org: str = "",
        not_before: int = 0,
        not_after: int = 0,
        timeout: float | None = None,
    ) -> admin_pb2.RoleBinding:
        b = admin_pb2.RoleBinding(
            principal=principal,
            role=role,
            site=site,
            org=org,
            not_before_unix=not_before,
            not_after_unix=not_after,
        )
        return self._call(self._admin.GrantRole, b, timeout)

    def revoke_role(
        self,
        principal: str,
        role: str,
        *,
        site: str = "",
        org: str = "",
        timeout: float | None = None,
    ) -> bool:
        b = admin_pb2.RoleBinding(principal=principal, role=role, site=site, org=org)
        return bool(self._call(self._admin.RevokeRole, b, timeout).removed)

    def list_roles(
        self, principal: str = "", *, timeout: float | None = None
    ) -> list[admin_pb2.RoleBinding]:
        r = self._call(
            self._admin.ListRoles, admin_pb2.ListRolesRequest(principal=principal), timeout
        )
        return list(r.bindings)

    def reload_policy(self, *, timeout: float | None = None) -> tuple[str, str]:
        r = self._call(self._admin.ReloadPolicy, admin_pb2.ReloadPolicyRequest(), timeout)
        return r.old_hash, r.new_hash

    # -- jobs -----------------------------------------------------------------------

    def submit_job(
        self,
        app: str | Path,
        targets: dict[str, str],
        *,
        rounds: int = 5,
        strategy: str = "fedavg",
        run_config: Mapping[str, str | int | float] | None = None,
        min_sites: int | None = None,
        round_timeout_s: int = 600,
        dp_noise_multiplier: float = 0.0,
        dp_max_grad_norm: float = 1.0,
        dp_epsilon: float = 0.0,
        dp_delta: float = 1e-5,
        purpose: str = "research",
        model_name: str = "model",
        timeout: float | None = None,
    ) -> jobs_pb2.Job:
        """Submit a Flower app (a module path like ``insitu.apps.breast_cancer`` or an app
        folder) to run on ``targets`` ({site_id: dataset}). The app is packed
        deterministically; sites approve its SHA-256 before it runs."""
        from insitu.flower.bundle import app_from_module, code_hash, pack_app

        app_dir = Path(app) if Path(str(app)).is_dir() else app_from_module(str(app))
        bundle = pack_app(app_dir)
        req = jobs_pb2.SubmitJobRequest(
            app_bundle=bundle,
            code_sha256=code_hash(bundle),
            targets=[jobs_pb2.SiteDataset(site_id=s, dataset=d) for s, d in targets.items()],
            rounds=rounds,
            strategy=strategy,
            run_config={k: str(v) for k, v in (run_config or {}).items()},
            min_sites=min_sites if min_sites is not None else len(targets),
            round_timeout_s=round_timeout_s,
            dp=session_pb2.DpSettings(
                noise_multiplier=dp_noise_multiplier,
                max_grad_norm=dp_max_grad_norm,
                epsilon=dp_epsilon,
                delta=dp_delta,
            ),
            purpose=purpose,
            model_name=model_name,
        )
        return self._call(self._jobs.SubmitJob, req, timeout or 60)

    def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        return self._call(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), timeout)

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """Stop a job of yours that has not finished (FailedPrecondition once it has)."""
        return self._call(self._jobs.CancelJob, jobs_pb2.GetJobRequest(job_id=job_id), timeout)

    def job_logs(
        self, job_id: str, *, tail_bytes: int = 0, timeout: float | None = None
    ) -> jobs_pb2.JobLogs:
        """The job's ServerApp output (the last ``tail_bytes`` when positive)."""
        return self._call(
            self._jobs.GetJobLogs,
            jobs_pb2.JobLogsRequest(job_id=job_id, tail_bytes=tail_bytes),
            timeout,
        )

    def list_jobs(self, *, timeout: float | None = None) -> list[jobs_pb2.Job]:
        return list(self._call(self._jobs.ListJobs, jobs_pb2.ListJobsRequest(), timeout).jobs)

    def watch_job(self, job_id: str, *, timeout: float = 3600) -> Iterator[jobs_pb2.JobEvent]:
        """Round-by-round progress: a snapshot, one event per round phase, a final snapshot."""
        try:
            yield from self._jobs.WatchJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # -- models -----------------------------------------------------------------------

    def list_models(self, *, timeout: float | None = None) -> list[jobs_pb2.ModelSummary]:
        return list(
            self._call(self._models.ListModels, jobs_pb2.ListModelsRequest(), timeout).models
        )

    def get_model(
        self, name: str, version: str = "", *, signing_key: bytes, timeout: float | None = None
    ) -> ModelArtifact:
        """Fetch a model and verify its Ed25519 signature (Vault transit ``model-signing``
        public key, 32 raw bytes, obtained out of band) and digests before returning it."""
        r = self._call(
            self._models.GetModel,
            jobs_pb2.GetModelRequest(name=name, version=version),
            timeout or 60,
        )
        return ModelArtifact.verified(r, signing_key)

    def deploy_model(
        self,
        name: str,
        version: str,
        site_id: str,
        *,
        canary_percent: float = 0.0,
        timeout: float | None = None,
    ) -> jobs_pb2.DeploymentStatus:
        """Have ``site_id`` fetch, verify and serve (or canary) a signed model version."""
        return self._call(
            self._models.DeployModel,
            jobs_pb2.DeployModelRequest(
                name=name, version=version, site_id=site_id, canary_percent=canary_percent
            ),
            timeout or 180,
        )

    def promote_model(
        self, name: str, site_id: str, *, timeout: float | None = None
    ) -> jobs_pb2.DeploymentStatus:
        return self._call(
            self._models.PromoteModel,
            jobs_pb2.ModelControlRequest(name=name, site_id=site_id),
            timeout,
        )

    def rollback_model(
        self, name: str, site_id: str, *, timeout: float | None = None
    ) -> jobs_pb2.DeploymentStatus:
        return self._call(
            self._models.RollbackModel,
            jobs_pb2.ModelControlRequest(name=name, site_id=site_id),
            timeout,
        )

    def grant_model(self, name: str, principal: str, *, timeout: float | None = None) -> None:
        """Allow ``principal`` (a SPIFFE id with the inference_client role) to predict."""
        self._call(
            self._models.GrantModel,
            jobs_pb2.GrantModelRequest(name=name, principal=principal),
            timeout,
        )

    # -- feature releases ---------------------------------------------------------------

    def list_releases(
        self, job_id: str = "", *, timeout: float | None = None
    ) -> list[features_pb2.ReleaseInfo]:
        r = self._call(
            self._features.ListReleases, features_pb2.ListReleasesRequest(job_id=job_id), timeout
        )
        return list(r.releases)

    def read_release(self, release_id: str, *, timeout: float | None = None) -> Release:
        """Fetch a release and verify its site-signed attestation against the batch."""
        from insitu.attestation import SignedAttestation, verify_attestation

        r = self._call(
            self._features.ReadRelease,
            features_pb2.ReadReleaseRequest(release_id=release_id),
            timeout or 60,
        )
        try:
            att = verify_attestation(
                SignedAttestation(r.attestation, r.signature, "site"), r.site_key, batch=r.batch
            )
        except Exception:
            raise IntegrityError(
                grpc.StatusCode.DATA_LOSS, "release attestation does not verify"
            ) from None
        return Release(r.info, r.batch, att)


@dataclass(frozen=True)
class Release:
    info: features_pb2.ReleaseInfo
    batch: bytes  # Arrow IPC stream
    attestation: dict[str, Any]

    def table(self) -> Any:
        import pyarrow as pa

        return pa.ipc.open_stream(self.batch).read_all()


@dataclass(frozen=True)
class ModelArtifact:
    name: str
    version: str
    manifest: dict[str, Any]
    state: bytes
    onnx: bytes

    @classmethod
    def verified(cls, r: jobs_pb2.ModelArtifact, signing_key: bytes) -> ModelArtifact:
        import hashlib

        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(signing_key).verify(r.signature, r.manifest)
        except (InvalidSignature, ValueError):
            raise IntegrityError(
                grpc.StatusCode.DATA_LOSS, "model signature does not verify"
            ) from None
        manifest = json.loads(r.manifest)
        if hashlib.sha256(r.state).hexdigest() != manifest["state_sha256"] or (
            r.onnx and hashlib.sha256(r.onnx).hexdigest() != manifest["onnx_sha256"]
        ):
            raise IntegrityError(grpc.StatusCode.DATA_LOSS, "model bytes do not match the manifest")
        return cls(manifest["name"], manifest["version"], manifest, r.state, r.onnx)
