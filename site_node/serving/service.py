"""The serving facade: repository + loaded versions + batchers + routing + metrics.

Plain functions for the servicer (Predict), the session stream's deploy commands and the
local admin: every operation takes and returns plain values, never protos or contexts.

Example::

    rt = ServingRuntime(ModelRepository(site_dir / "models"), verifier=ed25519_verifier(pk))
    rt.start()
    rt.deploy("mlp", 4, onnx_bytes, ArtifactMetadata.from_json_unverified(doc),
              canary_percent=10.0)
    p = rt.predict("mlp", "", {"x": rows}, caller="spiffe://demo.insitu/user/app-1")
    rt.rollback("mlp")
    rt.close()
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from insitu._proto.v1.site_pb2 import Tensor
from insitu.errors import ErrorCode, InsituError
from site_node.serving.artifact import ArtifactMetadata, Verifier
from site_node.serving.batcher import Batcher, DirectRunner, DynamicBatcher, Pending
from site_node.serving.config import ModelConfig, parse_config
from site_node.serving.metrics import ServingMetrics
from site_node.serving.repository import ModelRepository
from site_node.serving.runtime import OnnxSession
from site_node.serving.validation import decode_tensors, validate_inputs
from site_node.serving.versions import ModelVersions, ServingState

__all__ = ["LoadedVersion", "ModelStatus", "PendingPrediction", "Prediction", "ServingRuntime"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    model: str
    version: int
    outputs: dict[str, np.ndarray]
    rows: int


@dataclass(frozen=True)
class ModelStatus:
    model: str
    state: ServingState
    loaded: tuple[int, ...]
    on_disk: tuple[int, ...]
    provider: str  # execution provider of the serving version ("" if none loaded)


class LoadedVersion:
    """One version in memory: its ONNX Runtime session and its batcher."""

    def __init__(
        self,
        model: str,
        version: int,
        config: ModelConfig,
        session: OnnxSession,
        metrics: ServingMetrics,
    ) -> None:
        self.model, self.version, self.config, self.session = model, version, config, session
        label = str(version)
        self.closed = False

        def on_batch(rows: int) -> None:
            metrics.batch(model, label, rows)

        def on_depth(depth: int) -> None:
            metrics.set_queue_depth(model, label, depth)

        self.batcher: Batcher
        if config.batching.enabled:
            self.batcher = DynamicBatcher(
                session.run,
                config.batching,
                name=f"{model}/{version}",
                on_batch=on_batch,
                on_queue_depth=on_depth,
            )
        else:
            self.batcher = DirectRunner(session.run, on_batch=on_batch)

    def close(self) -> None:
        self.closed = True
        self.batcher.close()


class PendingPrediction:
    """A submitted prediction; :meth:`result` waits for it and records its metrics."""

    def __init__(
        self, runtime: ServingRuntime, loaded: LoadedVersion, pending: Pending, started: float
    ) -> None:
        self._rt, self._loaded, self._pending, self._t0 = runtime, loaded, pending, started
        self.version = loaded.version
        self.rows = pending.rows

    def result(self, timeout: float | None = None) -> Prediction:
        lv = self._loaded
        try:
            outputs = self._pending.result(timeout)
        except InsituError as e:
            self._rt._record(lv.model, str(lv.version), e.code.value, self._t0, 0)
            raise
        wanted = {n: outputs[n] for n in lv.config.outputs}
        self._rt._record(lv.model, str(lv.version), "ok", self._t0, self.rows)
        return Prediction(lv.model, lv.version, wanted, self.rows)


class ServingRuntime:
    """Every model of one site's repository, loaded and routed (thread-safe)."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        metrics: ServingMetrics | None = None,
        verifier: Verifier | None = None,
        providers: Sequence[str] | None = None,
        io_binding: bool | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics or ServingMetrics()
        self._verifier = verifier  # re-checks signatures at load when set
        self._providers = providers
        self._io_binding = io_binding
        self._models: dict[str, ModelVersions[LoadedVersion]] = {}
        self._lock = threading.Lock()  # guards _models; each ModelVersions guards itself

    def start(self) -> None:
        """Load every model in the repository as its persisted state says."""
        for name in self.repository.models():
            self._open(name)

    def close(self) -> None:
        with self._lock:
            models, self._models = self._models, {}
        for mv in models.values():
            mv.close()

    # -- predicting --------------------------------------------------------------------

    def predict(
        self,
        model: str,
        version: str | int,
        inputs: Sequence[Tensor] | Mapping[str, np.ndarray],
        caller: str,
        *,
        timeout: float | None = None,
    ) -> Prediction:
        """Validate, route, batch and run; the returned outputs are the config's."""
        return self.submit(model, version, inputs, caller).result(timeout)

    def submit(
        self,
        model: str,
        version: str | int,
        inputs: Sequence[Tensor] | Mapping[str, np.ndarray],
        caller: str,
    ) -> PendingPrediction:
        """Validate and queue; errors in the request raise here, before queueing."""
        t0 = time.perf_counter()
        mv = self._versions(model)
        explicit = _parse_version(version)
        for attempt in (0, 1):
            v = explicit if explicit is not None else mv.route(caller)
            lv = mv.get(v)
            try:
                arrays = self._validate(lv, inputs)
            except InsituError as e:
                self._record(model, str(v), e.code.value, t0, 0)
                raise
            try:
                return PendingPrediction(self, lv, lv.batcher.submit(arrays), t0)
            except InsituError as e:
                # The version was swapped out between routing and queueing: route again.
                if attempt == 0 and lv.closed and explicit is None:
                    continue
                self._record(model, str(v), e.code.value, t0, 0)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _validate(
        self, lv: LoadedVersion, inputs: Sequence[Tensor] | Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        arrays = inputs if isinstance(inputs, Mapping) else decode_tensors(inputs)
        return validate_inputs(arrays, lv.config.inputs)

    def _record(self, model: str, version: str, outcome: str, t0: float, rows: int) -> None:
        self.metrics.request(model, version, outcome, seconds=time.perf_counter() - t0, rows=rows)

    # -- deploying ---------------------------------------------------------------------

    def deploy(
        self,
        model: str,
        version: int,
        onnx_bytes: bytes,
        metadata: ArtifactMetadata,
        verify: Verifier,
        *,
        config_yaml: str | bytes | None = None,
        canary_percent: float | None = None,
    ) -> ModelStatus:
        """Verify and install ``version`` (see ModelRepository.install_version), then
        serve it or canary it, with ``config_yaml`` as the model's new config if given.

        Any failure leaves the serving version and ``config.yaml`` as they were (a
        verified version directory that then failed to load stays on disk, unserved).
        """
        repo = self.repository
        config = parse_config(config_yaml) if config_yaml is not None else None
        repo.install_version(model, version, onnx_bytes, metadata, verify, config=config)
        if config_yaml is None:
            return self.activate(model, version, canary_percent=canary_percent)
        previous = repo.config_bytes(model)
        repo.write_config(model, config_yaml)
        try:
            return self.activate(model, version, canary_percent=canary_percent)
        except BaseException:
            if previous is not None:
                repo.write_config(model, previous)
            else:
                (repo.model_dir(model) / "config.yaml").unlink(missing_ok=True)
            raise

    def activate(
        self, model: str, version: int, *, canary_percent: float | None = None
    ) -> ModelStatus:
        """Serve (or canary) an installed version."""
        bp = None
        if canary_percent is not None:
            if not 0 < canary_percent < 100:
                raise InsituError(ErrorCode.INVALID_ARGUMENT, "canary: must be in (0, 100) %")
            bp = round(canary_percent * 100)
        mv = self._versions(model, create=True)
        mv.set_servable(self.repository.servable_versions(model))
        mv.activate(version, canary_basis_points=bp)
        return self.status(model)

    def promote(self, model: str) -> ModelStatus:
        self._versions(model).promote()
        return self.status(model)

    def rollback(self, model: str) -> ModelStatus:
        """Withdraw the canary, or go back to the previous serving version; works offline."""
        self._versions(model).rollback()
        return self.status(model)

    def status(self, model: str) -> ModelStatus:
        mv = self._versions(model)
        state = mv.state
        provider = ""
        if state.serving is not None:
            try:
                provider = mv.get(state.serving).session.provider
            except InsituError:
                provider = ""
        return ModelStatus(
            model,
            state,
            tuple(mv.loaded_versions()),
            tuple(self.repository.versions(model)),
            provider,
        )

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    # -- internals ---------------------------------------------------------------------

    def _versions(self, model: str, *, create: bool = False) -> ModelVersions[LoadedVersion]:
        with self._lock:
            mv = self._models.get(model)
        if mv is not None:
            return mv
        if not create and model not in self.repository.models():
            raise InsituError(ErrorCode.NOT_FOUND, f"model '{model}' is not deployed here")
        return self._open(model)

    def _open(self, model: str) -> ModelVersions[LoadedVersion]:
        with self._lock:
            mv = self._models.get(model)
            if mv is None:
                self.repository.config(model)  # NOT_FOUND/CONFIG before anything loads
                mv = ModelVersions(
                    model,
                    self.repository.model_dir(model),
                    lambda v: self._load(model, v),
                    servable=self.repository.servable_versions(model),
                )
                self._models[model] = mv
            return mv

    def _load(self, model: str, version: int) -> LoadedVersion:
        config = self.repository.config(model)
        path = self.repository.model_path(model, version)
        data = path.read_bytes()
        meta = self.repository.metadata(model, version)
        # Files at rest are re-checked: a swapped model.onnx must not load after restart.
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), meta.sha256):
            raise InsituError(ErrorCode.INTEGRITY, f"{model}/{version}/model.onnx: sha256 mismatch")
        if self._verifier is not None:
            meta.verify(self._verifier)
        session = OnnxSession(
            data,
            providers=self._providers,
            intra_op_threads=config.runtime.intra_op_threads,
            io_binding=self._io_binding,
        )
        log.info("loaded %s v%d on %s", model, version, session.provider)
        return LoadedVersion(model, version, config, session, self.metrics)


def _parse_version(version: str | int) -> int | None:
    if isinstance(version, int) and not isinstance(version, bool):
        if version < 1:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "version: must be >= 1")
        return version
    if version == "":
        return None
    # "3" or the registry's spelling "v3".
    digits = version[1:] if isinstance(version, str) and version.startswith("v") else version
    if isinstance(digits, str) and digits.isdigit() and len(digits) <= 9 and digits[0] != "0":
        return int(digits)
    raise InsituError(
        ErrorCode.INVALID_ARGUMENT, "version: must be empty, N or vN with N a positive integer"
    )
