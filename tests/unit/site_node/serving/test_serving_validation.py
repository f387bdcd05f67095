"""Wire tensors and input validation: precise field errors that never quote values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insitu._proto.v1.site_pb2 import Tensor
from insitu.errors import ErrorCode, InsituError
from site_node.serving import TensorSpec, decode_tensors, encode_tensors, validate_inputs
from site_node.serving.validation import MAX_ELEMENTS

SCHEMA = (TensorSpec("x", "float32", (-1, 4)), TensorSpec("ids", "int64", (-1,)))
SECRET = 731942.5  # a recognisable value that must never appear in an error


def _fail(fn: object, *args: object) -> str:
    with pytest.raises(InsituError) as e:
        fn(*args)  # type: ignore[operator]
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    assert "731942" not in str(e.value) and "731942" not in e.value.public_message()
    return e.value.detail


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["float32", "float64", "int64", "int32"]),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_decode_round_trip(dtype: str, shape: list[int], seed: int) -> None:
    arr = (np.random.default_rng(seed).standard_normal(shape) * 1000).astype(dtype)
    (t,) = encode_tensors({"a": arr})
    assert t.dtype == dtype and list(t.shape) == shape
    back = decode_tensors([t])["a"]
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_wire_format_is_little_endian_c_order() -> None:
    (t,) = encode_tensors({"a": np.array([[1, 2], [3, 4]], dtype=">i4")})
    assert t.dtype == "int32" and t.data == np.array([1, 2, 3, 4], "<i4").tobytes()


@pytest.mark.parametrize(
    ("tensor", "field"),
    [
        (Tensor(name="x", dtype="float16", shape=[1], data=b"\0\0"), "inputs[0].dtype"),
        (Tensor(name="x", dtype="", shape=[1], data=b"\0" * 4), "inputs[0].dtype"),
        (Tensor(name="", dtype="float32", shape=[1], data=b"\0" * 4), "inputs[0].name"),
        (Tensor(name="x", dtype="float32", shape=[2, 4], data=b"\0" * 28), "inputs[0].data"),
        (Tensor(name="x", dtype="float32", shape=[], data=b""), "inputs[0].shape"),
        (Tensor(name="x", dtype="float32", shape=[-1, 4], data=b""), "inputs[0].shape"),
        (Tensor(name="x", dtype="float32", shape=[1] * 9, data=b"\0" * 4), "inputs[0].shape"),
        (Tensor(name="x", dtype="float32", shape=[MAX_ELEMENTS + 1], data=b""), "inputs[0].shape"),
    ],
)
def test_decode_refuses_malformed_tensors(tensor: Tensor, field: str) -> None:
    assert _fail(decode_tensors, [tensor]).startswith(field + ":")


def test_decode_refuses_duplicate_names() -> None:
    t = encode_tensors({"x": np.zeros((1, 4), np.float32)})[0]
    assert _fail(decode_tensors, [t, t]).startswith("inputs[1].name")


def _good(n: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), SECRET, np.float32), "ids": np.arange(n, dtype=np.int64)}


def test_valid_inputs_pass_in_schema_order() -> None:
    out = validate_inputs({"ids": _good()["ids"], "x": _good()["x"]}, SCHEMA)
    assert list(out) == ["x", "ids"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: {"x": d["x"]}, "inputs['ids']: is missing"),
        (lambda d: {**d, "ssn_731942": d["ids"]}, "inputs: unexpected"),
        (lambda d: {**d, "x": d["x"].astype(np.float64)}, "inputs['x'].dtype: must be float32"),
        (lambda d: {**d, "x": d["x"][:, :3]}, "inputs['x'].shape: must be [-1, 4], got [3, 3]"),
        (lambda d: {**d, "x": d["x"].reshape(3, 2, 2)}, "inputs['x'].shape"),
        (lambda d: {**d, "x": d["x"][:0]}, "inputs['x'].shape: has no rows"),
        (lambda d: {**d, "ids": d["ids"][:2]}, "inputs['ids'].shape: has 2 rows"),
    ],
)
def test_schema_errors_name_the_field(change: object, field: str) -> None:
    detail = _fail(validate_inputs, change(_good()), SCHEMA)  # type: ignore[operator]
    assert detail.startswith(field), detail
    assert "ssn" not in detail  # caller-chosen names are not echoed either


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_numbers_are_refused_naming_the_row(bad: float) -> None:
    d = _good(5)
    d["x"] = d["x"].copy()
    d["x"][3, 2] = bad
    detail = _fail(validate_inputs, d, SCHEMA)
    assert detail == "inputs['x']: row 3 contains NaN or infinite values"
