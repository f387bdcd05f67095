"""The method table: every RPC insitu serves, with the action it performs, who may call
it at the transport level, the resource it acts on, and whether a retry is safe.

A unit test fails if any RPC declared in protos/ lacks an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from insitu.identity.spiffe import IdentityKind

__all__ = ["METHODS", "MethodRule", "Resource", "rule_for"]


@dataclass(frozen=True)
class Resource:
    """What a call acts on, for authorization and audit."""

    type: str
    id: str


def _federation(_req: Any) -> Resource:
    return Resource("Federation", "federation")


def _site_of(req: Any) -> Resource:
    return Resource("Site", getattr(req, "site_id", "") or "")


def _model_of(req: Any) -> Resource:
    return Resource("Model", getattr(req, "model", "") or getattr(req, "name", "") or "")


def _job_of(req: Any) -> Resource:
    return Resource("Job", getattr(req, "job_id", "") or "")


def _release_of(req: Any) -> Resource:
    return Resource("FeatureRelease", getattr(req, "release_id", "") or "")


def _dataset_of(req: Any) -> Resource:
    return Resource("Dataset", getattr(req, "dataset", "") or "")


def _binding_of(req: Any) -> Resource:
    return Resource("RoleBinding", getattr(req, "principal", "") or "")


@dataclass(frozen=True)
class MethodRule:
    action: str
    kinds: frozenset[IdentityKind]
    resource: Callable[[Any], Resource]
    idempotent: bool = False
    public: bool = False  # reachable without a client certificate (enrolment listener only)
    # The handler authorizes each returned item itself (list calls); the interceptor then
    # checks only the transport rule.
    per_item: bool = False


_SITE = frozenset({IdentityKind.SITE})
_USER = frozenset({IdentityKind.USER})
_ANY = frozenset(IdentityKind)
_CALLERS = frozenset({IdentityKind.USER, IdentityKind.SERVICE})

METHODS: dict[str, MethodRule] = {
    "/insitu.v1.Enrolment/Enrol": MethodRule("site.enrol", frozenset(), _site_of, public=True),
    "/insitu.v1.SiteSession/Connect": MethodRule("session.connect", _SITE, _site_of),
    "/insitu.v1.SiteSession/Renew": MethodRule("session.renew", _SITE, _site_of),
    "/insitu.v1.Admin/CreateJoinToken": MethodRule("token.create", _USER, _site_of),
    "/insitu.v1.Admin/ListSites": MethodRule("site.list", _USER, _federation, idempotent=True),
    "/insitu.v1.Admin/GetSite": MethodRule("site.get", _USER, _site_of, idempotent=True),
    "/insitu.v1.Admin/RevokeSite": MethodRule("site.revoke", _USER, _site_of),
    "/insitu.v1.Admin/GrantRole": MethodRule("role.grant", _USER, _binding_of),
    "/insitu.v1.Admin/RevokeRole": MethodRule("role.revoke", _USER, _binding_of),
    "/insitu.v1.Admin/ListRoles": MethodRule("role.list", _USER, _federation, idempotent=True),
    "/insitu.v1.Admin/ReloadPolicy": MethodRule("policy.reload", _USER, _federation),
    "/insitu.v1.Jobs/SubmitJob": MethodRule("job.submit", _USER, _job_of),
    "/insitu.v1.Jobs/GetJob": MethodRule("job.read", _USER, _job_of, idempotent=True),
    "/insitu.v1.Jobs/CancelJob": MethodRule("job.cancel", _USER, _job_of),
    "/insitu.v1.Jobs/WatchJob": MethodRule("job.read", _USER, _job_of, idempotent=True),
    "/insitu.v1.Jobs/GetJobLogs": MethodRule("job.read", _USER, _job_of, idempotent=True),
    "/insitu.v1.Jobs/ListJobs": MethodRule(
        "job.read", _USER, _federation, idempotent=True, per_item=True
    ),
    "/insitu.v1.Models/ListModels": MethodRule(
        "model.read", _CALLERS, _federation, idempotent=True, per_item=True
    ),
    "/insitu.v1.Models/GetModel": MethodRule("model.read", _CALLERS, _model_of, idempotent=True),
    "/insitu.v1.Models/DeployModel": MethodRule("model.deploy", _USER, _model_of),
    "/insitu.v1.Models/PromoteModel": MethodRule("model.promote", _USER, _model_of),
    "/insitu.v1.Models/RollbackModel": MethodRule("model.rollback", _USER, _model_of),
    "/insitu.v1.Models/GrantModel": MethodRule("model.grant", _USER, _model_of),
    "/insitu.v1.Features/ListReleases": MethodRule(
        "features.read", _USER, _federation, idempotent=True, per_item=True
    ),
    "/insitu.v1.Features/ReadRelease": MethodRule(
        "features.read", _USER, _release_of, idempotent=True
    ),
    "/insitu.v1.SiteApi/ReleaseFeatures": MethodRule("features.approve", _USER, _dataset_of),
    "/insitu.v1.SiteApi/Predict": MethodRule("predict", _CALLERS, _model_of),
    "/insitu.v1.SiteApi/PredictStream": MethodRule("predict", _CALLERS, _model_of),
    "/grpc.health.v1.Health/Check": MethodRule("health.check", _ANY, _federation, idempotent=True),
    "/grpc.health.v1.Health/Watch": MethodRule("health.check", _ANY, _federation, idempotent=True),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": MethodRule(
        "health.check", _ANY, _federation, idempotent=True
    ),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": MethodRule(
        "health.check", _ANY, _federation, idempotent=True
    ),
}


def rule_for(method: str) -> MethodRule | None:
    return METHODS.get(method)
