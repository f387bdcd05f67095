"""Thin gRPC servicers: unpack the request, call a plain handler, pack the reply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from coordinator import admin, enrolment, roles
from coordinator.resources import job_record_resource, model_resource
from coordinator.session_stream import serve_session
from insitu._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    enrolment_pb2,
    enrolment_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    identity_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import current_principal
from insitu.rpc.chain import annotate

if TYPE_CHECKING:
    from coordinator.server import Coordinator

__all__ = [
    "AdminServicer",
    "EnrolmentServicer",
    "FeaturesServicer",
    "JobsServicer",
    "ModelsServicer",
    "SiteSessionServicer",
]


def _issued(e: enrolment.Enrolled) -> identity_pb2.IssuedCertificate:
    return identity_pb2.IssuedCertificate(
        spiffe_id=e.spiffe_id.uri,
        cert_pem=e.cert.cert_pem,
        chain_pem=e.cert.chain_pem,
        ca_pem=e.ca_pem,
        serial_hex=f"{e.cert.serial:x}",
        not_after_unix=int(e.cert.not_after.timestamp()),
    )


class EnrolmentServicer(enrolment_pb2_grpc.EnrolmentServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def Enrol(
        self, request: enrolment_pb2.EnrolRequest, context: grpc.ServicerContext
    ) -> enrolment_pb2.EnrolResponse:
        result, token_id = enrolment.enrol_site(
            self.c.store,
            self.c.keys,
            self.c.settings,
            request.site_id,
            request.join_token,
            request.csr_pem,
        )
        annotate(token_id=token_id, serial=f"{result.cert.serial:x}")
        return enrolment_pb2.EnrolResponse(
            certificate=_issued(result),
            trust_domain=self.c.settings.trust_domain,
            model_signing_keys=self.c.keys.public_keys("model-signing"),
            audit_signing_key=self.c.keys.public_key("audit-signing"),
        )


class SiteSessionServicer(session_pb2_grpc.SiteSessionServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def Connect(
        self, request_iterator: Iterator[session_pb2.SiteMessage], context: grpc.ServicerContext
    ) -> Iterator[session_pb2.CoordinatorMessage]:
        principal = current_principal()
        yield from serve_session(
            request_iterator,
            principal,
            self.c.sessions,
            self.c.store,
            self.c.settings.heartbeat_interval_ms,
            on_message=self.c.on_site_message,
            on_hello=self.c.witness.on_hello,
            active_jobs=self.c.jobs.active_jobs_for,
        )

    def Renew(
        self, request: session_pb2.RenewRequest, context: grpc.ServicerContext
    ) -> session_pb2.RenewResponse:
        principal = current_principal()
        result = enrolment.renew_site_cert(
            self.c.store, self.c.keys, self.c.settings, principal.name, request.csr_pem
        )
        annotate(serial=f"{result.cert.serial:x}")
        return session_pb2.RenewResponse(certificate=_issued(result))


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def CreateJoinToken(
        self, request: admin_pb2.CreateJoinTokenRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateJoinTokenResponse:
        minted = enrolment.mint_join_token(
            self.c.store,
            self.c.settings,
            request.site_id,
            int(request.ttl_seconds),
            current_principal().spiffe_id.uri,
        )
        annotate(token_id=minted.token_id)
        return admin_pb2.CreateJoinTokenResponse(
            token=minted.token,
            token_id=minted.token_id,
            site_id=minted.site_id,
            expires_unix=minted.expires_at,
        )

    def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListSitesResponse:
        return admin_pb2.ListSitesResponse(sites=admin.list_sites(self.c.store, self.c.sessions))

    def GetSite(
        self, request: admin_pb2.GetSiteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.Site:
        return admin.get_site(self.c.store, self.c.sessions, request.site_id)

    def RevokeSite(
        self, request: admin_pb2.RevokeSiteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeSiteResponse:
        site, n = admin.revoke_site(
            self.c.store,
            self.c.sessions,
            self.c.keys,
            self.c.revocation,
            request.site_id,
            request.reason,
        )
        return admin_pb2.RevokeSiteResponse(site=site, revoked_certificates=n)

    def GrantRole(
        self, request: admin_pb2.RoleBinding, context: grpc.ServicerContext
    ) -> admin_pb2.RoleBinding:
        b = roles.grant_role(
            self.c.store,
            self.c.authorizer,
            request,
            self.c.settings.trust_domain,
            current_principal().spiffe_id.uri,
        )
        self.c.deployments.sync_all()
        return b

    def RevokeRole(
        self, request: admin_pb2.RoleBinding, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeRoleResponse:
        removed = roles.revoke_role(
            self.c.store, self.c.authorizer, request, self.c.settings.trust_domain
        )
        self.c.deployments.sync_all()
        return admin_pb2.RevokeRoleResponse(removed=removed)

    def ListRoles(
        self, request: admin_pb2.ListRolesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListRolesResponse:
        return admin_pb2.ListRolesResponse(
            bindings=roles.list_roles(self.c.store, request.principal)
        )

    def ReloadPolicy(
        self, request: admin_pb2.ReloadPolicyRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ReloadPolicyResponse:
        old, new = self.c.reload_policy()
        return admin_pb2.ReloadPolicyResponse(old_hash=old, new_hash=new)


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        p = current_principal()
        job = self.c.jobs.submit(request, p.spiffe_id.uri, self.c.authorizer.org_of(p) or "")
        annotate(job_id=job.job_id, code_sha256=job.code_sha256)
        return job.to_proto()

    def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self.c.jobs.get(request.job_id).to_proto()

    def CancelJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self.c.jobs.cancel(request.job_id, current_principal().spiffe_id.uri).to_proto()

    def WatchJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> Iterator[jobs_pb2.JobEvent]:
        yield from self.c.jobs.watch(request.job_id)

    def GetJobLogs(
        self, request: jobs_pb2.JobLogsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.JobLogs:
        data, truncated = self.c.jobs.logs(request.job_id, request.tail_bytes)
        return jobs_pb2.JobLogs(data=data, truncated=truncated)

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        p = current_principal()
        visible = [
            j.to_proto()
            for j in self.c.jobs.records()
            if self.c.authorizer.check(p, "job.read", job_record_resource(j))
        ]
        return jobs_pb2.ListJobsResponse(jobs=visible)


def _summary(m: dict[str, object]) -> jobs_pb2.ModelSummary:
    lin = m.get("lineage") or {}
    assert isinstance(lin, dict)
    return jobs_pb2.ModelSummary(
        name=str(m["name"]),
        version=str(m["version"]),
        owner=str(m["owner"]),
        created_unix=int(str(m.get("created", 0))),
        sha256=str(m.get("state_sha256", "")),
        lineage=jobs_pb2.ModelLineage(
            job_id=str(lin.get("job_id", "")),
            code_sha256=str(lin.get("code_sha256", "")),
            rounds=int(lin.get("rounds", 0)),
            sites=list(lin.get("sites", [])),
            dataset_fingerprints=dict(lin.get("datasets", {})),
            epsilon_spent=float(sum(dict(lin.get("epsilon_spent", {})).values())),
            metrics={k: float(v) for k, v in dict(lin.get("metrics", {})).items()},
            strategy=str(lin.get("strategy", "")),
        ),
    )


class ModelsServicer(jobs_pb2_grpc.ModelsServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def ListModels(
        self, request: jobs_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListModelsResponse:
        p = current_principal()
        return jobs_pb2.ListModelsResponse(
            models=[
                _summary(m)
                for m in self.c.registry.list()
                if self.c.authorizer.check(p, "model.read", model_resource(m))
            ]
        )

    def GetModel(
        self, request: jobs_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ModelArtifact:
        versions = [m for m in self.c.registry.list() if m["name"] == request.name]
        if not versions:
            raise InsituError(ErrorCode.NOT_FOUND, f"model {request.name} not found")
        version = request.version or max(versions, key=lambda m: int(m["version"][1:]))["version"]
        rec = self.c.registry.load(request.name, version)
        annotate(model=request.name, version=version)
        return jobs_pb2.ModelArtifact(
            summary=_summary(rec.info),
            state=rec.state,
            onnx=rec.onnx,
            manifest=rec.manifest,
            signature=rec.signature,
            key_version=rec.key_version,
        )

    def DeployModel(
        self, request: jobs_pb2.DeployModelRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.DeploymentStatus:
        annotate(
            model=request.name,
            version=request.version,
            site=request.site_id,
            canary_percent=str(request.canary_percent),
        )
        return self.c.deployments.deploy(request)

    def PromoteModel(
        self, request: jobs_pb2.ModelControlRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.DeploymentStatus:
        annotate(model=request.name, site=request.site_id)
        return self.c.deployments.control(request, "promote")

    def RollbackModel(
        self, request: jobs_pb2.ModelControlRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.DeploymentStatus:
        annotate(model=request.name, site=request.site_id)
        return self.c.deployments.control(request, "rollback")

    def GrantModel(
        self, request: jobs_pb2.GrantModelRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.GrantModelResponse:
        annotate(model=request.name, principal=request.principal)
        self.c.deployments.grant(request)
        return jobs_pb2.GrantModelResponse()


def _release_info(i: dict[str, object]) -> features_pb2.ReleaseInfo:
    return features_pb2.ReleaseInfo(
        release_id=str(i["release_id"]),
        site_id=str(i["site_id"]),
        dataset=str(i["dataset"]),
        job_id=str(i["job_id"]),
        purposes=[str(p) for p in i["purposes"]],  # type: ignore[attr-defined]
        rows_out=int(str(i["rows_out"])),
        k_achieved=int(str(i["k_achieved"])),
        policy_hash=str(i["policy_hash"]),
        created_unix=int(str(i["created"])),
    )


class FeaturesServicer(features_pb2_grpc.FeaturesServicer):
    def __init__(self, c: Coordinator) -> None:
        self.c = c

    def ListReleases(
        self, request: features_pb2.ListReleasesRequest, context: grpc.ServicerContext
    ) -> features_pb2.ListReleasesResponse:
        p = current_principal()
        out = []
        for info in self.c.features.infos():
            if request.job_id and info["job_id"] != request.job_id:
                continue
            if self.c.authorizer.check(p, "features.read", self.c.features.resource_of(info)):
                out.append(_release_info(info))
        return features_pb2.ListReleasesResponse(releases=out)

    def ReadRelease(
        self, request: features_pb2.ReadReleaseRequest, context: grpc.ServicerContext
    ) -> features_pb2.ReleaseData:
        info, batch, payload, signature = self.c.features.read(request.release_id)
        annotate(release_id=request.release_id, site=str(info["site_id"]))
        return features_pb2.ReleaseData(
            info=_release_info(info),
            batch=batch,
            attestation=payload,
            signature=signature,
            site_key=self.c.store.attestation_key(str(info["site_id"])) or b"",
        )
