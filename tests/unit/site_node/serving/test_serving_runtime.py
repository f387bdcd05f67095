"""The ONNX Runtime session wrapper: the provider it really got, tuned options, outputs
equal to the model's own, with and without IO binding."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from serving_support import Models, reference, rows

from insitu.errors import ErrorCode, InsituError
from site_node.serving import OnnxSession, TensorSpec


def test_reports_the_provider_actually_used(models: Models) -> None:
    s = OnnxSession(models.mlp[1])
    assert s.provider == s.providers[0]
    assert s.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert "CPUExecutionProvider" in s.providers  # the fallback is always there
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert s.provider == "CPUExecutionProvider"


def test_unavailable_providers_are_filtered_out(models: Models) -> None:
    s = OnnxSession(models.mlp[1], providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert s.providers == ["CPUExecutionProvider"]
    assert not s.uses_io_binding  # plain run on CPU


def test_signature_is_read_from_the_graph(models: Models) -> None:
    s = OnnxSession(models.cnn)
    assert s.input_specs == (TensorSpec("image", "float32", (-1, 1, 8, 8)),)
    assert s.output_specs == (TensorSpec("logits", "float32", (-1, 10)),)


@pytest.mark.parametrize("io_binding", [False, True])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_outputs_equal_plain_onnxruntime(models: Models, io_binding: bool, n: int) -> None:
    s = OnnxSession(
        models.mlp[1], providers=["CPUExecutionProvider"], intra_op_threads=1, io_binding=io_binding
    )
    x = rows(n, seed=n)
    got = s.run({"x": x})
    want = reference(models.mlp[1], {"x": x})
    assert got.keys() == want.keys() == {"y"}
    assert got["y"].shape == (n, 4)
    np.testing.assert_allclose(got["y"], want["y"], atol=1e-5, rtol=0)


def test_malformed_model_is_invalid_argument() -> None:
    with pytest.raises(InsituError) as e:
        OnnxSession(b"not onnx at all")
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    assert e.value.detail.startswith("model.onnx:")
