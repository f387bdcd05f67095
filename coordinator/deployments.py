"""Serving at the sites, driven from the coordinator: deploy a signed model version to a
site over its session (the site verifies before serving), promote or roll back a canary,
grant predict access, and keep each site's authorization state (bindings, grants,
revocations) in sync so sites authorize Predict locally.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from coordinator.registry import SIGNING_KEY, ModelRegistry
from coordinator.sessions import Session, SessionRegistry
from coordinator.store import CoordinatorStore
from insitu._proto.v1 import admin_pb2, jobs_pb2, session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.identity.spiffe import SpiffeId, validate_name
from insitu.keys import KeyService
from insitu.model_artifact import artifact_document, onnx_io, signing_message

__all__ = ["DeploymentManager", "parse_version"]

RESULT_TIMEOUT_S = 120.0
SITE_ROLES = ("site_admin", "data_steward")


def parse_version(version: str) -> int:
    m = re.fullmatch(r"v?([1-9][0-9]{0,8})", version or "")
    if not m:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "version must look like v3")
    return int(m.group(1))


def default_config(inputs: list[dict[str, object]], outputs: list[dict[str, object]]) -> str:
    return str(
        yaml.safe_dump(
            {
                "inputs": inputs,
                "outputs": [o["name"] for o in outputs],
                "batching": {
                    "enabled": True,
                    "max_batch_size": 64,
                    "max_queue_delay_us": 0,
                    "max_queue_size": 1024,
                },
                "version_policy": {"latest": 3},
            },
            sort_keys=False,
        )
    )


@dataclass
class _Waiter:
    event: threading.Event
    result: session_pb2.DeployResult | None = None


class DeploymentManager:
    def __init__(
        self,
        sessions: SessionRegistry,
        registry: ModelRegistry,
        keys: KeyService,
        store: CoordinatorStore,
        trust_domain: str,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.keys = keys
        self.store = store
        self.trust_domain = trust_domain
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self.revoked: Callable[[], frozenset[int]] = frozenset

    # -- requests to sites ---------------------------------------------------------------

    def _session(self, site_id: str) -> Session:
        validate_name(site_id, "site_id")
        s = self.sessions.get(site_id)
        if s is None or s.closed.is_set():
            raise InsituError(ErrorCode.UNAVAILABLE, f"site {site_id} is not connected")
        return s

    def _ask(
        self, site_id: str, msg: session_pb2.CoordinatorMessage, request_id: str, model: str
    ) -> jobs_pb2.DeploymentStatus:
        waiter = _Waiter(threading.Event())
        with self._lock:
            self._waiters[request_id] = waiter
        try:
            self._session(site_id).outbound.put(msg)
            if not waiter.event.wait(RESULT_TIMEOUT_S):
                raise InsituError(ErrorCode.DEADLINE_EXCEEDED, f"site {site_id} did not answer")
        finally:
            with self._lock:
                self._waiters.pop(request_id, None)
        r = waiter.result
        assert r is not None
        if not r.ok:
            raise InsituError(ErrorCode.FAILED_PRECONDITION, f"site {site_id}: {r.error}")
        return jobs_pb2.DeploymentStatus(
            site_id=site_id,
            model=model,
            serving_version=r.serving_version,
            canary_version=r.canary_version,
            canary_percent=r.canary_percent,
        )

    def deploy(self, req: jobs_pb2.DeployModelRequest) -> jobs_pb2.DeploymentStatus:
        version = parse_version(req.version)
        if not 0 <= req.canary_percent < 100:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "canary_percent must be in [0, 100)")
        self._session(req.site_id)
        record = self.registry.load(req.name, f"v{version}")  # verifies signature + digests
        if not record.onnx:
            raise InsituError(ErrorCode.FAILED_PRECONDITION, "this model has no ONNX export")
        inputs, outputs = onnx_io(record.onnx)
        import hashlib

        sha = hashlib.sha256(record.onnx).hexdigest()
        key_version = self.keys.key_version(SIGNING_KEY)
        message = signing_message(req.name, version, sha, inputs, outputs, key_version)
        kv, signature = self.keys.sign_with_version(SIGNING_KEY, message)
        if kv != key_version:  # rotated in between: sign again with the version named
            message = signing_message(req.name, version, sha, inputs, outputs, kv)
            kv, signature = self.keys.sign_with_version(SIGNING_KEY, message)
        doc = artifact_document(req.name, version, record.onnx, inputs, outputs, kv, signature)
        import json

        request_id = uuid.uuid4().hex
        msg = session_pb2.CoordinatorMessage(
            model_deploy=session_pb2.ModelDeploy(
                request_id=request_id,
                model=req.name,
                version=version,
                onnx=record.onnx,
                artifact=json.dumps(doc).encode(),
                config_yaml=default_config(inputs, outputs),
                canary_percent=req.canary_percent,
            )
        )
        return self._ask(req.site_id, msg, request_id, req.name)

    def control(self, req: jobs_pb2.ModelControlRequest, action: str) -> jobs_pb2.DeploymentStatus:
        request_id = uuid.uuid4().hex
        msg = session_pb2.CoordinatorMessage(
            model_control=session_pb2.ModelControl(
                request_id=request_id, model=req.name, action=action
            )
        )
        return self._ask(req.site_id, msg, request_id, req.name)

    def on_result(self, session: Session, r: session_pb2.DeployResult) -> None:
        with self._lock:
            waiter = self._waiters.get(r.request_id)
        if waiter is not None:
            waiter.result = r
            waiter.event.set()

    # -- grants and authorization state at the sites ------------------------------------

    def grant(self, req: jobs_pb2.GrantModelRequest) -> None:
        sid = SpiffeId.parse(req.principal)
        if sid.trust_domain != self.trust_domain:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "principal is of another trust domain")
        if not any(m["name"] == req.name for m in self.registry.list()):
            raise InsituError(ErrorCode.NOT_FOUND, f"model {req.name} not found")
        self.store.grant_model(req.name, sid.uri)
        self.sync_all()

    def authz_state(self, site_id: str) -> session_pb2.AuthzSync:
        bindings = [
            admin_pb2.RoleBinding(
                principal=b.principal,
                role=b.role,
                site=b.site,
                org=b.org,
                not_before_unix=b.not_before or 0,
                not_after_unix=b.not_after or 0,
            )
            for b in self.store.bindings_of(None)
            if (b.role not in SITE_ROLES) or b.site == site_id
        ]
        grants = [
            session_pb2.ModelGrant(model=m, principal=p) for m, p in self.store.model_grants()
        ]
        owners = {m["name"]: m["owner"] for m in self.registry.list()}
        return session_pb2.AuthzSync(
            bindings=bindings,
            grants=grants,
            revoked_serials=[f"{s:x}" for s in sorted(self.revoked())],
            as_of_unix=int(time.time()),
            model_owners=owners,
        )

    def sync(self, session: Session) -> None:
        session.outbound.put(
            session_pb2.CoordinatorMessage(authz_sync=self.authz_state(session.site_id))
        )

    def sync_all(self) -> None:
        for s in self.sessions.all():
            if not s.closed.is_set():
                self.sync(s)
