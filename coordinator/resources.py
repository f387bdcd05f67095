"""The attribute-rich Cedar resources of coordinator actions (jobs, models, bindings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from insitu.authz import EntityRef, Resource
from insitu.errors import ErrorCode, InsituError
from insitu.identity.principal import Principal
from insitu.identity.spiffe import SpiffeId, validate_name
from insitu.rpc.methods import Resource as MethodResource

if TYPE_CHECKING:
    from coordinator.authorization import CoordinatorAuthorizer
    from coordinator.features import FeatureIntake
    from coordinator.jobs import JobManager, JobRecord
    from coordinator.registry import ModelRegistry

__all__ = ["install_resolvers", "job_resource", "model_resource"]


def _user(uri: str) -> EntityRef:
    return EntityRef("User", SpiffeId.parse(uri).name)


def _dataset(site: str, dataset: str, purpose: str) -> Resource:
    return Resource(
        "Dataset",
        f"{site}:{dataset}",
        {"site": EntityRef("Site", site), "purposes": {purpose} if purpose else set()},
    )


def job_resource(
    job_id: str, owner: str, org: str, purpose: str, targets: list[tuple[str, str]]
) -> Resource:
    return Resource(
        "Job",
        job_id,
        {
            "owner": _user(owner),
            "org": EntityRef("Org", org or "none"),
            "purpose": purpose,
            "approved_datasets": [_dataset(s, d, purpose) for s, d in targets],
            "sites": [EntityRef("Site", s) for s, _ in targets],
        },
    )


def job_record_resource(job: JobRecord) -> Resource:
    return job_resource(job.job_id, job.owner, job.org, job.purpose, job.targets)


def model_resource(manifest: dict[str, Any]) -> Resource:
    return Resource(
        "Model",
        manifest["name"],
        {
            "owner": _user(manifest["owner"]),
            "org": EntityRef("Org", manifest.get("org") or "none"),
            "grantees": set(),
            "service_grantees": set(),
        },
    )


def install_resolvers(
    authz: CoordinatorAuthorizer, jobs: JobManager, registry: ModelRegistry, features: FeatureIntake
) -> None:
    def role_binding(p: Principal, r: MethodResource, req: Any) -> Resource:
        from coordinator.roles import binding_from_proto

        binding_from_proto(req, authz.trust_domain)  # malformed: INVALID_ARGUMENT, not a deny
        attrs: dict[str, Any] = {"role": req.role, "subject": req.principal}
        if req.site:
            attrs["site"] = EntityRef("Site", req.site)
        if req.org:
            attrs["org"] = EntityRef("Org", req.org)
        return Resource("RoleBinding", f"{req.principal}#{req.role}", attrs)

    def job_submit(p: Principal, r: MethodResource, req: Any) -> Resource:
        org = authz.org_of(p) or ""
        return job_resource(
            "new", p.spiffe_id.uri, org, req.purpose, [(t.site_id, t.dataset) for t in req.targets]
        )

    def job_read(p: Principal, r: MethodResource, req: Any) -> Resource:
        return job_record_resource(jobs.get(r.id))

    def model_read(p: Principal, r: MethodResource, req: Any) -> Resource:
        for m in registry.list():
            if m["name"] == r.id and (not req.version or m["version"] == req.version):
                return model_resource(m)
        raise InsituError(ErrorCode.NOT_FOUND, f"model {r.id} not found")

    def manifest_of(name: str, version: str = "") -> dict[str, Any]:
        found = [m for m in registry.list() if m["name"] == name]
        if version:
            found = [m for m in found if m["version"] == version]
        if not found:
            raise InsituError(ErrorCode.NOT_FOUND, f"model {name} {version} not found")
        return max(found, key=lambda m: int(m["version"][1:]))

    def model_at_site(p: Principal, r: MethodResource, req: Any) -> Resource:
        validate_name(req.site_id, "site_id")
        version = getattr(req, "version", "") or ""
        m = manifest_of(req.name, version if version.startswith("v") else "")
        return Resource(
            "ModelVersion",
            f"{m['name']}:{m['version']}@{req.site_id}",
            {"model": model_resource(m), "site": EntityRef("Site", req.site_id)},
        )

    def model_grant(p: Principal, r: MethodResource, req: Any) -> Resource:
        return model_resource(manifest_of(req.name))

    def release_read(p: Principal, r: MethodResource, req: Any) -> Resource:
        for info in features.infos():
            if info["release_id"] == req.release_id:
                return features.resource_of(info)
        raise InsituError(ErrorCode.NOT_FOUND, f"release {req.release_id} not found")

    authz.resolvers.update(
        {
            "features.read": release_read,
            "model.deploy": model_at_site,
            "model.promote": model_at_site,
            "model.rollback": model_at_site,
            "model.grant": model_grant,
            "role.grant": role_binding,
            "role.revoke": role_binding,
            "job.submit": job_submit,
            "job.read": job_read,
            "job.cancel": job_read,
            "model.read": model_read,
        }
    )
