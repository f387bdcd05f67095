"""Versions through the runtime facade: canary split, sticky routing, promote, rollback,
persisted state, and refused deployments that leave the serving version alone."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving_support import Models, Signer, mlp_config, reference, rows, tree

from insitu.errors import ErrorCode, InsituError
from site_node.serving import (
    ModelRepository,
    ModelVersions,
    ServingRuntime,
    ServingState,
    route_bucket,
)

CALLERS = [f"spiffe://test.insitu/user/app-{i:04d}" for i in range(2000)]


def _deploy(rt: ServingRuntime, models: Models, signer: Signer, v: int, **kw: object) -> None:
    rt.deploy("mlp", v, models.mlp[v], signer.sign("mlp", v, models.mlp[v]), signer.verifier, **kw)  # type: ignore[arg-type]


def _predict(
    rt: ServingRuntime, caller: str, x: np.ndarray, version: str = ""
) -> tuple[int, np.ndarray]:
    p = rt.predict("mlp", version, {"x": x}, caller, timeout=20)
    return p.version, p.outputs["y"]


def _assert_serves(
    rt: ServingRuntime, models: Models, version: int, caller: str = CALLERS[0]
) -> None:
    x = rows(5, seed=42)
    got_v, y = _predict(rt, caller, x)
    assert got_v == version
    np.testing.assert_allclose(y, reference(models.mlp[version], {"x": x})["y"], atol=1e-5, rtol=0)


def test_first_deploy_serves_and_matches_onnxruntime(
    runtime: ServingRuntime, models: Models
) -> None:
    _assert_serves(runtime, models, 1)
    st = runtime.status("mlp")
    assert st.state == ServingState(serving=1) and st.loaded == (1,)
    assert st.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")


def test_cnn_serves_through_the_batcher(runtime: ServingRuntime, models: Models) -> None:
    x = rows(3, seed=1, shape=(1, 8, 8))
    p = runtime.predict("cnn", "", {"image": x}, CALLERS[0], timeout=20)
    np.testing.assert_allclose(
        p.outputs["logits"], reference(models.cnn, {"image": x})["logits"], atol=1e-5, rtol=0
    )


def test_canary_split_is_ten_percent_and_sticky(
    runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    _deploy(runtime, models, signer, 2, canary_percent=10)
    assert runtime.status("mlp").state == ServingState(1, 2, 1000, ())
    x = rows(1, seed=3)
    with ThreadPoolExecutor(32) as pool:  # concurrent callers, as in production
        routed = list(pool.map(lambda c: _predict(runtime, c, x)[0], CALLERS))
    canary = routed.count(2)
    # Binomial(2000, 0.1): mean 200, sd 13.4. Hashing is deterministic, so this fixed
    # caller set gives the same count on every run; +-5 sd only guards the bucket math.
    sd = math.sqrt(2000 * 0.1 * 0.9)
    assert abs(canary - 200) < 5 * sd, canary
    assert set(routed) == {1, 2}
    # Sticky: the same caller gets the same version, and that version's outputs.
    for c in CALLERS[:50]:
        v = 2 if route_bucket("mlp", c) < 1000 else 1
        for _ in range(2):
            got_v, y = _predict(runtime, c, x)
            assert got_v == v
            np.testing.assert_allclose(
                y, reference(models.mlp[v], {"x": x})["y"], atol=1e-5, rtol=0
            )


def test_promote_then_rollback_restores_previous_outputs(
    runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    _deploy(runtime, models, signer, 2, canary_percent=25)
    runtime.promote("mlp")
    assert runtime.status("mlp").state == ServingState(serving=2, history=(1,))
    for c in CALLERS[:20]:
        assert _predict(runtime, c, rows(1, seed=0))[0] == 2
    _assert_serves(runtime, models, 2)
    runtime.rollback("mlp")
    assert runtime.status("mlp").state == ServingState(serving=1)
    for c in CALLERS[:20]:
        _assert_serves(runtime, models, 1, c)
    with pytest.raises(InsituError) as e:
        runtime.rollback("mlp")
    assert e.value.code is ErrorCode.FAILED_PRECONDITION


def test_rollback_with_a_canary_withdraws_the_canary(
    runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    _deploy(runtime, models, signer, 2, canary_percent=50)
    runtime.rollback("mlp")
    assert runtime.status("mlp").state == ServingState(serving=1)
    assert {_predict(runtime, c, rows(1, seed=0))[0] for c in CALLERS[:100]} == {1}


def test_direct_deploy_replaces_serving_and_rollback_needs_no_registry(
    repo: ModelRepository, runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    _deploy(runtime, models, signer, 2)
    _assert_serves(runtime, models, 2)
    # Only local files are used from here: no verifier call, no registry.
    runtime.rollback("mlp")
    _assert_serves(runtime, models, 1)


def test_state_survives_a_restart(
    repo: ModelRepository, runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    _deploy(runtime, models, signer, 2)
    _deploy(runtime, models, signer, 3, canary_percent=10)
    before = {c: _predict(runtime, c, rows(1, seed=0))[0] for c in CALLERS[:100]}
    assert set(before.values()) == {2, 3}
    state = runtime.status("mlp").state
    runtime.close()
    rt2 = ServingRuntime(ModelRepository(repo.root), verifier=signer.verifier)
    rt2.start()
    try:
        assert rt2.status("mlp").state == state == ServingState(2, 3, 1000, (1,))
        assert {c: _predict(rt2, c, rows(1, seed=0))[0] for c in CALLERS[:100]} == before
        rt2.rollback("mlp")  # canary withdrawn
        rt2.rollback("mlp")  # back to v1, loaded from disk as the warm spare
        _assert_serves(rt2, models, 1)
    finally:
        rt2.close()


def test_tampered_or_missigned_deploys_are_never_served(
    repo: ModelRepository, runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    good = models.mlp[2]
    tampered = good[:200] + bytes([good[200] ^ 0xFF]) + good[201:]
    attempts = [
        (tampered, signer.sign("mlp", 2, good), ErrorCode.INTEGRITY),
        (good, Signer().sign("mlp", 2, good), ErrorCode.INTEGRITY),
        (
            b"garbage, not onnx",
            signer.sign("mlp", 2, b"garbage, not onnx"),
            ErrorCode.INVALID_ARGUMENT,
        ),
    ]
    for canary in (None, 10.0):
        for data, meta, code in attempts:
            before = tree(repo.root)
            with pytest.raises(InsituError) as e:
                runtime.deploy("mlp", 2, data, meta, signer.verifier, canary_percent=canary)
            assert e.value.code is code
            assert tree(repo.root) == before
            assert runtime.status("mlp").state == ServingState(serving=1)
            _assert_serves(runtime, models, 1)


def test_tampering_at_rest_is_not_loaded_after_restart(
    repo: ModelRepository, runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    _deploy(runtime, models, signer, 2)
    runtime.close()
    path = repo.model_path("mlp", 2)
    data = path.read_bytes()
    path.write_bytes(data[:300] + bytes([data[300] ^ 0x01]) + data[301:])
    rt2 = ServingRuntime(ModelRepository(repo.root), verifier=signer.verifier)
    rt2.start()
    try:
        with pytest.raises(InsituError) as e:
            _predict(rt2, CALLERS[0], rows(1, seed=0))
        assert e.value.code is ErrorCode.UNAVAILABLE
        rt2.rollback("mlp")
        _assert_serves(rt2, models, 1)
    finally:
        rt2.close()


def test_explicit_versions_follow_the_version_policy(
    tmp_path: Path, models: Models, signer: Signer
) -> None:
    for policy, addressable in (("{latest: 1}", [3]), ("{specific: [1, 3]}", [1, 3])):
        rt = ServingRuntime(ModelRepository(tmp_path / policy[1:5]))
        try:
            _deploy(rt, models, signer, 1, config_yaml=mlp_config(policy=policy))
            _deploy(rt, models, signer, 2)
            _deploy(rt, models, signer, 3)
            for v in (1, 2, 3):
                if v in addressable:
                    spelled = f"v{v}" if v == 1 else str(v)  # the registry writes "v1"
                    got_v, y = _predict(rt, CALLERS[0], rows(2, seed=v), version=spelled)
                    assert got_v == v
                    np.testing.assert_allclose(
                        y, reference(models.mlp[v], {"x": rows(2, seed=v)})["y"], atol=1e-5
                    )
                else:
                    with pytest.raises(InsituError) as e:
                        _predict(rt, CALLERS[0], rows(1, seed=0), version=str(v))
                    assert e.value.code is ErrorCode.NOT_FOUND
            # The rollback target (v2) stays loaded even where the policy hides it.
            assert 2 in rt.status("mlp").loaded
        finally:
            rt.close()


def test_bad_requests_get_precise_errors_and_serving_goes_on(
    runtime: ServingRuntime, models: Models
) -> None:
    x = rows(2, seed=0)
    cases = [
        (("nope", "", {"x": x}), ErrorCode.NOT_FOUND, "model 'nope'"),
        (("mlp", "abc", {"x": x}), ErrorCode.INVALID_ARGUMENT, "version:"),
        (("mlp", "9", {"x": x}), ErrorCode.NOT_FOUND, "version 9"),
        (("mlp", "", {"x": x[:, :15]}), ErrorCode.INVALID_ARGUMENT, "inputs['x'].shape"),
        (
            ("mlp", "", {"x": np.full((2, 16), np.nan, np.float32)}),
            ErrorCode.INVALID_ARGUMENT,
            "row 0",
        ),
    ]
    for args, code, text in cases:
        with pytest.raises(InsituError) as e:
            runtime.predict(*args, CALLERS[0], timeout=20)  # type: ignore[arg-type]
        assert e.value.code is code and text in e.value.detail, e.value
        _assert_serves(runtime, models, 1)


def test_batcher_off_serves_the_same_outputs(
    tmp_path: Path, models: Models, signer: Signer
) -> None:
    rt = ServingRuntime(ModelRepository(tmp_path / "m"))
    try:
        _deploy(rt, models, signer, 1, config_yaml=mlp_config(enabled=False))
        _assert_serves(rt, models, 1)
    finally:
        rt.close()


def test_metrics_have_no_caller_labels(runtime: ServingRuntime, models: Models) -> None:
    from prometheus_client import REGISTRY

    _assert_serves(runtime, models, 1)
    with pytest.raises(InsituError):
        runtime.predict("mlp", "", {"x": rows(1, seed=0)[:, :3]}, CALLERS[0])
    text = runtime.metrics.exposition().decode()
    assert 'insitu_serving_requests_total{model="mlp",outcome="ok",version="1"} 1.0' in text
    assert 'outcome="invalid_argument"' in text
    assert 'insitu_serving_rows_total{model="mlp",version="1"} 5.0' in text
    assert "insitu_serving_batch_size_bucket" in text and "insitu_serving_queue_depth" in text
    assert "request_latency_seconds_bucket" in text
    assert "spiffe" not in text and "app-" not in text
    assert (
        REGISTRY.get_sample_value(
            "insitu_serving_requests_total", {"model": "mlp", "version": "1", "outcome": "ok"}
        )
        is None
    )


class _Fake:
    """A loaded version stand-in for the pure routing/state tests (no ORT needed)."""

    def __init__(self, v: int) -> None:
        self.v, self.closed = v, False

    def close(self) -> None:
        self.closed = True


def test_a_failed_load_changes_nothing(tmp_path: Path) -> None:
    broken = {3}

    def loader(v: int) -> _Fake:
        if v in broken:
            raise InsituError(ErrorCode.INVALID_ARGUMENT, "model.onnx: cannot load")
        return _Fake(v)

    mv = ModelVersions("m", tmp_path, loader, servable=[1, 2])
    mv.activate(2)
    state_file = (tmp_path / "state.json").read_bytes()
    for kw in ({}, {"canary_basis_points": 500}):
        with pytest.raises(InsituError):
            mv.activate(3, **kw)  # type: ignore[arg-type]
        assert mv.state == ServingState(serving=2)
        assert (tmp_path / "state.json").read_bytes() == state_file
        assert mv.route(CALLERS[0]) == 2


def test_unloaded_versions_are_closed(tmp_path: Path) -> None:
    made: dict[int, _Fake] = {}

    def loader(v: int) -> _Fake:
        made[v] = _Fake(v)
        return made[v]

    mv = ModelVersions("m", tmp_path, loader, servable=[])
    for v in (1, 2, 3, 4):
        mv.activate(v)
    # Serving 4 and the rollback target 3 stay; 1 and 2 are closed (still on disk).
    assert mv.loaded_versions() == [3, 4]
    assert made[1].closed and made[2].closed and not made[3].closed
    mv.close()
    assert made[4].closed


def test_route_bucket_is_stable_and_uniform() -> None:
    assert route_bucket("mlp", CALLERS[0]) == route_bucket("mlp", CALLERS[0])
    assert 0 <= route_bucket("mlp", "x") < 10_000
    buckets = [route_bucket("mlp", c) // 1000 for c in CALLERS]
    counts = [buckets.count(i) for i in range(10)]
    assert all(abs(c - 200) < 5 * math.sqrt(2000 * 0.1 * 0.9) for c in counts), counts


def test_malformed_state_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"format": 1, "serving": "two"}')
    with pytest.raises(InsituError) as e:
        ModelVersions("m", tmp_path, _Fake, servable=[1])
    assert e.value.code is ErrorCode.CONFIG


def test_a_refused_deploy_leaves_config_yaml_alone(
    repo: ModelRepository, runtime: ServingRuntime, models: Models, signer: Signer
) -> None:
    before = tree(repo.root)
    good = models.mlp[2]
    for config_yaml, data in (
        (mlp_config(max_batch_size=4).replace("[-1, 16]", "[-1, 17]"), good),  # misfit
        (mlp_config(max_batch_size=4), good[:-10]),  # tampered
        ("inputs: [}", good),  # not YAML
    ):
        with pytest.raises(InsituError):
            runtime.deploy(
                "mlp",
                2,
                data,
                signer.sign("mlp", 2, good),
                signer.verifier,
                config_yaml=config_yaml,
            )
        assert tree(repo.root) == before
        _assert_serves(runtime, models, 1)
