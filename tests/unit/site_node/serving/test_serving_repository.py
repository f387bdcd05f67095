"""Installing a model version: verified before anything is written, atomic, immutable."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest
from serving_support import MLP_IN, MLP_OUT, Models, Signer, mlp_config, tree

from insitu.errors import ErrorCode, InsituError
from site_node.serving import ArtifactMetadata, ModelRepository, TensorSpec, signing_message


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.fixture
def repo_v1(repo: ModelRepository, models: Models, signer: Signer) -> ModelRepository:
    repo.write_config("mlp", mlp_config())
    repo.install_version(
        "mlp", 1, models.mlp[1], signer.sign("mlp", 1, models.mlp[1]), signer.verifier
    )
    return repo


def _refused(repo: ModelRepository, code: ErrorCode, *install_args: object) -> InsituError:
    before = tree(repo.root)
    with pytest.raises(InsituError) as e:
        repo.install_version(*install_args)  # type: ignore[arg-type]
    assert e.value.code is code, e.value
    assert tree(repo.root) == before  # nothing written, not even a temp dir
    return e.value


def test_install_writes_model_and_verified_metadata(
    repo_v1: ModelRepository, models: Models, signer: Signer
) -> None:
    d = repo_v1.version_dir("mlp", 1)
    assert (d / "model.onnx").read_bytes() == models.mlp[1]
    meta = repo_v1.metadata("mlp", 1)
    assert meta == signer.sign("mlp", 1, models.mlp[1])
    repo_v1.verify_installed("mlp", 1, signer.verifier)
    assert repo_v1.versions("mlp") == [1] and repo_v1.models() == ["mlp"]
    assert sorted(p.name for p in repo_v1.model_dir("mlp").iterdir()) == ["1", "config.yaml"]


def test_tampered_onnx_bytes_are_refused(
    repo_v1: ModelRepository, models: Models, signer: Signer
) -> None:
    meta = signer.sign("mlp", 2, models.mlp[2])
    tampered = _flip(models.mlp[2], len(models.mlp[2]) // 2)
    err = _refused(repo_v1, ErrorCode.INTEGRITY, "mlp", 2, tampered, meta, signer.verifier)
    assert "sha256" in err.detail


def test_signature_by_another_key_is_refused(
    repo_v1: ModelRepository, models: Models, signer: Signer
) -> None:
    other = Signer()
    meta = other.sign("mlp", 2, models.mlp[2])
    err = _refused(repo_v1, ErrorCode.INTEGRITY, "mlp", 2, models.mlp[2], meta, signer.verifier)
    assert "signature" in err.detail


@pytest.mark.parametrize(
    "change",
    [
        lambda m: replace(m, key_version=2),
        lambda m: replace(m, outputs=(TensorSpec("y", "float32", (-1, 5)),)),
        lambda m: replace(m, signature=_flip(m.signature, 3)),
        lambda m: replace(m, signature=m.signature[:63]),
    ],
)
def test_metadata_changed_after_signing_is_refused(
    repo_v1: ModelRepository, models: Models, signer: Signer, change: object
) -> None:
    meta = change(signer.sign("mlp", 2, models.mlp[2]))  # type: ignore[operator]
    _refused(repo_v1, ErrorCode.INTEGRITY, "mlp", 2, models.mlp[2], meta, signer.verifier)


def test_a_verifier_that_raises_is_a_failed_verification(
    repo_v1: ModelRepository, models: Models, signer: Signer
) -> None:
    def broken(message: bytes, signature: bytes) -> bool:
        raise RuntimeError("vault down")

    meta = signer.sign("mlp", 2, models.mlp[2])
    _refused(repo_v1, ErrorCode.INTEGRITY, "mlp", 2, models.mlp[2], meta, broken)


def test_signed_but_malformed_onnx_is_refused(repo_v1: ModelRepository, signer: Signer) -> None:
    garbage = b"\x08\x07this is not an ONNX graph" * 10
    meta = signer.sign("mlp", 2, garbage)
    err = _refused(repo_v1, ErrorCode.INVALID_ARGUMENT, "mlp", 2, garbage, meta, signer.verifier)
    assert err.detail.startswith("model.onnx:")


@pytest.mark.parametrize(
    ("inputs", "outputs", "field"),
    [
        ((TensorSpec("x", "float32", (-1, 15)),), MLP_OUT, "inputs['x'].shape"),
        ((TensorSpec("x", "float64", (-1, 16)),), MLP_OUT, "inputs['x'].dtype"),
        ((TensorSpec("features", "float32", (-1, 16)),), MLP_OUT, "inputs:"),
        (MLP_IN, (TensorSpec("y", "int64", (-1, 4)),), "outputs['y'].dtype"),
        (MLP_IN, (TensorSpec("z", "float32", (-1, 4)),), "outputs:"),
    ],
)
def test_declared_signature_must_match_the_graph(
    repo_v1: ModelRepository,
    models: Models,
    signer: Signer,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    field: str,
) -> None:
    meta = signer.sign("mlp", 2, models.mlp[2], inputs, outputs)
    err = _refused(
        repo_v1, ErrorCode.INVALID_ARGUMENT, "mlp", 2, models.mlp[2], meta, signer.verifier
    )
    assert err.detail.startswith(field), err.detail


def test_a_graph_with_a_fixed_batch_dim_cannot_be_declared_batched(
    repo_v1: ModelRepository, signer: Signer
) -> None:
    import io

    import torch

    buf = io.BytesIO()
    m = torch.nn.Linear(16, 4).eval()
    torch.onnx.export(
        m, (torch.randn(1, 16),), buf, input_names=["x"], output_names=["y"], dynamo=False
    )
    meta = signer.sign("mlp", 2, buf.getvalue())
    err = _refused(
        repo_v1, ErrorCode.INVALID_ARGUMENT, "mlp", 2, buf.getvalue(), meta, signer.verifier
    )
    assert "shape" in err.detail


def test_artifact_for_another_model_or_version_is_refused(
    repo_v1: ModelRepository, models: Models, signer: Signer
) -> None:
    meta = signer.sign("cnn", 2, models.mlp[2])
    _refused(repo_v1, ErrorCode.INVALID_ARGUMENT, "mlp", 2, models.mlp[2], meta, signer.verifier)
    meta = signer.sign("mlp", 3, models.mlp[2])
    _refused(repo_v1, ErrorCode.INVALID_ARGUMENT, "mlp", 2, models.mlp[2], meta, signer.verifier)


def test_artifact_must_fit_config_yaml(
    repo: ModelRepository, models: Models, signer: Signer
) -> None:
    repo.write_config("mlp", mlp_config().replace("[-1, 16]", "[-1, 17]"))
    meta = signer.sign("mlp", 1, models.mlp[1])
    err = _refused(repo, ErrorCode.INVALID_ARGUMENT, "mlp", 1, models.mlp[1], meta, signer.verifier)
    assert "config.yaml" in err.detail


def test_versions_are_immutable(repo_v1: ModelRepository, models: Models, signer: Signer) -> None:
    same = signer.sign("mlp", 1, models.mlp[1])
    repo_v1.install_version("mlp", 1, models.mlp[1], same, signer.verifier)  # idempotent
    other = signer.sign("mlp", 1, models.mlp[2])
    _refused(repo_v1, ErrorCode.ALREADY_EXISTS, "mlp", 1, models.mlp[2], other, signer.verifier)


def test_version_policy_selects_servable_versions(
    repo: ModelRepository, models: Models, signer: Signer
) -> None:
    repo.write_config("mlp", mlp_config(policy="{latest: 2}"))
    for v in (1, 2, 3):
        repo.install_version(
            "mlp", v, models.mlp[v], signer.sign("mlp", v, models.mlp[v]), signer.verifier
        )
    assert repo.servable_versions("mlp") == [2, 3]
    repo.write_config("mlp", mlp_config(policy="{specific: [1, 3, 7]}"))
    assert repo.servable_versions("mlp") == [1, 3]


def test_incomplete_version_dirs_are_ignored(repo_v1: ModelRepository) -> None:
    (repo_v1.model_dir("mlp") / "5").mkdir()  # e.g. a crash of a foreign tool
    (repo_v1.model_dir("mlp") / ".tmp-6-abc").mkdir()
    assert repo_v1.versions("mlp") == [1]


def test_model_names_cannot_escape_the_repository(repo: ModelRepository) -> None:
    for bad in ("../etc", "a/b", "", "UPPER", "x" * 80):
        with pytest.raises(InsituError) as e:
            repo.model_dir(bad)
        assert e.value.code is ErrorCode.INVALID_ARGUMENT


def test_metadata_json_is_parsed_strictly(models: Models, signer: Signer) -> None:
    meta = signer.sign("mlp", 1, models.mlp[1])
    doc = json.loads(meta.to_json())
    assert ArtifactMetadata.from_json_unverified(meta.to_json()) == meta
    for key, value, code in [
        ("extra", 1, ErrorCode.INVALID_ARGUMENT),
        ("version", "1", ErrorCode.INVALID_ARGUMENT),
        ("sha256", "ABC", ErrorCode.INVALID_ARGUMENT),
        ("model", "../x", ErrorCode.INVALID_ARGUMENT),
        ("inputs", [], ErrorCode.INVALID_ARGUMENT),
        ("signature", base64.b64encode(b"x" * 10).decode(), ErrorCode.INTEGRITY),
        ("signature", "not base64!", ErrorCode.INTEGRITY),
    ]:
        bad = {**doc, key: value}
        with pytest.raises(InsituError) as e:
            ArtifactMetadata.from_json_unverified(json.dumps(bad))
        assert e.value.code is code, key
    with pytest.raises(InsituError):
        ArtifactMetadata.from_json_unverified(b"{not json")


def test_signing_message_is_canonical_and_binds_every_field(models: Models) -> None:
    msg = signing_message("mlp", 3, "ab" * 32, MLP_IN, MLP_OUT, 1)
    # RFC 8785: sorted keys, no whitespace; the coordinator signs these exact bytes.
    assert msg == (
        b'{"inputs":[{"dtype":"float32","name":"x","shape":[-1,16]}],"key_version":1,'
        b'"model":"mlp","outputs":[{"dtype":"float32","name":"y","shape":[-1,4]}],'
        b'"sha256":"' + b"ab" * 32 + b'","type":"insitu.model-artifact.v1","version":3}'
    )
    variants = {
        signing_message("mlp", 4, "ab" * 32, MLP_IN, MLP_OUT, 1),
        signing_message("cnn", 3, "ab" * 32, MLP_IN, MLP_OUT, 1),
        signing_message("mlp", 3, "cd" * 32, MLP_IN, MLP_OUT, 1),
        signing_message("mlp", 3, "ab" * 32, MLP_OUT, MLP_IN, 1),
        signing_message("mlp", 3, "ab" * 32, MLP_IN, MLP_OUT, 2),
    }
    assert msg not in variants and len(variants) == 5


def test_tampering_at_rest_is_detected(
    repo_v1: ModelRepository, signer: Signer, tmp_path: Path
) -> None:
    path = repo_v1.model_path("mlp", 1)
    path.write_bytes(_flip(path.read_bytes(), 100))
    with pytest.raises(InsituError) as e:
        repo_v1.verify_installed("mlp", 1, signer.verifier)
    assert e.value.code is ErrorCode.INTEGRITY
