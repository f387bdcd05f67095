"""The checks on a job's final model: its arrays against what it sent to sites, and its ONNX
export loaded by real ONNX Runtime inside a real bubblewrap sandbox."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from coordinator.jobs.model_check import (
    OnnxSignature,
    array_spec,
    check_final_arrays,
    check_onnx,
    onnx_signature,
)
from insitu.errors import ErrorCode, InsituError
from insitu.sandbox import Launcher, Limits, SandboxSpec, launcher_for, sandbox_env

LIMITS = Limits(
    memory_mb=2048,
    cpu_seconds=60,
    processes=64,
    open_files=256,
    scratch_mb=64,
    message_timeout_s=60,
)
CANARY = "CANARY-7f3a9c-do-not-echo"


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Launcher:
    spec = SandboxSpec(limits=LIMITS, env=sandbox_env(os.environ))
    got = launcher_for(
        spec,
        unsafe=False,
        host_cwd=tmp_path_factory.mktemp("check"),
        escape_hatch="nothing: these tests need bubblewrap",
    )
    assert got.sandboxed
    return got


def _model(
    nodes: list[NodeProto],
    inputs: list[ValueInfoProto],
    outputs: list[ValueInfoProto],
    inits: Sequence[TensorProto] = (),
) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _linear(width: int = 4, batch: str = "N") -> bytes:
    """y = x @ W with x: float[batch, width] and W: float[width, 2]."""
    w = numpy_helper.from_array(np.full((width, 2), 0.5, np.float32), "W")
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )


def _refused(excinfo: pytest.ExceptionInfo[InsituError]) -> str:
    assert excinfo.value.code is ErrorCode.FAILED_PRECONDITION
    return excinfo.value.detail


# 1. Final arrays --------------------------------------------------------------------------

REFERENCE: dict[str, np.ndarray] = {
    "w": np.zeros((2, 3), np.float32),
    "b": np.zeros(3, np.float32),
    "steps": np.zeros((), np.int64),
}


def test_final_arrays_with_the_reference_spec_pass() -> None:
    spec = array_spec(REFERENCE)
    assert spec == {"w": ((2, 3), "float32"), "b": ((3,), "float32"), "steps": ((), "int64")}
    final = {k: np.ones_like(v) for k, v in REFERENCE.items()}
    check_final_arrays(final, spec)


def _changed(**arrays: np.ndarray | None) -> dict[str, np.ndarray]:
    final = {k: np.ones_like(v) for k, v in REFERENCE.items()}
    for name, a in arrays.items():
        if a is None:
            del final[name]
        else:
            final[name] = a
    return final


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        ({}, "the ServerApp's strategy returned no model"),
        (_changed(b=None), "lacks array 'b'"),
        (_changed(extra=np.ones(3, np.float32)), "has array 'extra', which the job did not"),
        (_changed(w=np.ones((3, 2), np.float32)), "'w' has shape (3, 2), expected (2, 3)"),
        (_changed(w=np.ones((2, 3), np.float64)), "'w' has dtype float64, expected float32"),
        (
            _changed(b=np.array([1, np.nan, np.inf], np.float32)),
            "'b' is not finite (2 of 3 values are NaN or infinite)",
        ),
    ],
    ids=["empty", "missing", "extra", "shape", "dtype", "nan"],
)
def test_final_arrays_that_differ_from_what_sites_got_are_refused(
    final: dict[str, np.ndarray], expected: str
) -> None:
    with pytest.raises(InsituError) as e:
        check_final_arrays(final, array_spec(REFERENCE))
    assert expected in _refused(e)


def test_a_long_array_name_is_cut_in_the_error() -> None:
    name = "n" * 64 + CANARY
    with pytest.raises(InsituError) as e:
        check_final_arrays({name: np.ones(1, np.float32)}, {})
    detail = _refused(e)
    assert repr("n" * 64) in detail
    assert CANARY not in detail


# 2. ONNX export, in the sandbox -----------------------------------------------------------


def test_a_valid_model_passes_with_its_signature(launcher: Launcher) -> None:
    sig = check_onnx(_linear(), launcher, previous=None)
    assert sig == OnnxSignature(
        inputs=(("x", "tensor(float)", ("N", 4)),),
        outputs=(("y", "tensor(float)", ("N", 2)),),
        finite=True,
    )
    assert OnnxSignature.from_json(sig.to_json()) == sig
    # The next version keeps the signature (a renamed symbolic dim is still dynamic).
    assert check_onnx(_linear(batch="batch"), launcher, previous=sig).finite


def test_a_signature_change_is_refused_naming_the_input(launcher: Launcher) -> None:
    v3 = onnx_signature(_linear(width=8), launcher)
    with pytest.raises(InsituError) as e:
        check_onnx(_linear(width=4), launcher, previous=v3, previous_version="v3")
    assert "input 'x' shape ['N', 4] differs from v3's ['N', 8]" in _refused(e)


def test_garbage_is_refused_with_the_error_class_only(launcher: Launcher) -> None:
    with pytest.raises(InsituError) as e:
        check_onnx(b"\x08\x07garbage" + CANARY.encode(), launcher, previous=None)
    assert _refused(e) == "the ONNX export does not load in ONNX Runtime (InvalidProtobuf)"


def test_a_model_whose_output_is_nan_is_refused(launcher: Launcher) -> None:
    zero_by_zero = _model(
        [helper.make_node("Div", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    assert onnx_signature(zero_by_zero, launcher).finite is False
    with pytest.raises(InsituError) as e:
        check_onnx(zero_by_zero, launcher, previous=None)
    assert "not finite" in _refused(e)


def test_a_model_that_fails_to_run_is_refused(launcher: Launcher) -> None:
    to_three = numpy_helper.from_array(np.array([3], np.int64), "s")
    reshape = _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [to_three],
    )
    with pytest.raises(InsituError) as e:
        check_onnx(reshape, launcher, previous=None)
    assert _refused(e) == "the ONNX export fails to run on a zero-filled input (Fail)"


def test_a_model_without_tensor_inputs_is_refused(launcher: Launcher) -> None:
    seq = _model(
        [helper.make_node("SequenceLength", ["xs"], ["n"])],
        [helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("n", TensorProto.INT64, None)],
    )
    with pytest.raises(InsituError) as e:
        check_onnx(seq, launcher, previous=None)
    assert "input 'xs' is a seq(tensor(float)), not a tensor" in _refused(e)


def _attack_models() -> list[bytes]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    undefined = _model([helper.make_node("Relu", [CANARY + "\x00\xff garbage"], ["y"])], [x], [y])
    short = numpy_helper.from_array(np.ones((4, 2), np.float32), CANARY + "\x00\xff garbage")
    short.raw_data = b"\x00" * 5  # not 32 bytes
    bad_init = _model([helper.make_node("MatMul", ["x", short.name], ["y"])], [x], [y], [short])
    return [undefined, bad_init]


@pytest.mark.parametrize("onnx", _attack_models(), ids=["undefined-input", "short-initializer"])
def test_an_error_never_echoes_names_from_the_file(launcher: Launcher, onnx: bytes) -> None:
    # ONNX Runtime's own message quotes the name (so this test can fail)...
    with pytest.raises(Exception, match=CANARY):
        ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    # ...the check's does not.
    with pytest.raises(InsituError) as e:
        check_onnx(onnx, launcher, previous=None)
    detail = _refused(e)
    assert CANARY not in detail and CANARY not in str(e.value)
    assert detail.startswith("the ONNX export does not load in ONNX Runtime (")


# The parent's side, against stand-in children: bounded, strict, killed on time -----------


class _Child:
    """A launcher that runs a given program instead of the checker."""

    sandboxed = False
    limits = LIMITS

    def __init__(self, code: str) -> None:
        self.code = code

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin"}

    @property
    def cwd(self) -> str:
        return "/"

    def command(self, argv: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", self.code]

    def inside(self, host_path: Path) -> str:
        return str(host_path)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import time; time.sleep(60)", "did not finish within 1 s"),
        ("import sys; sys.exit(9)", "ended with code 9"),
        ('import sys; print(\'{"error": "not a class"}\'); sys.exit(2)', "malformed report"),
        ('print(\'{"inputs": [], "outputs": [], "finite": 1}\')', "malformed report"),
        ('print(\'{"inputs": [], "outputs": [], "finite": true, "x": 1}\')', "malformed report"),
        (
            'print(\'{"inputs": [], "inputs": [], "outputs": [], "finite": true}\')',
            "malformed report",
        ),
        ("import sys; sys.stdout.write('x' * (2 << 20))", "too large"),
    ],
    ids=["hangs", "crashes", "bad-error", "bool-typed", "extra-key", "duplicate-key", "huge"],
)
def test_the_report_is_read_strictly(code: str, expected: str) -> None:
    with pytest.raises(InsituError) as e:
        onnx_signature(_linear(), _Child(code), timeout_s=1 if "sleep" in code else 30)
    assert expected in _refused(e)


@pytest.mark.parametrize(
    "stored",
    [
        {"inputs": [], "outputs": []},
        {
            "inputs": [{"name": "x", "type": "tensor(float)", "shape": [True]}],
            "outputs": [],
            "finite": True,
        },
        {
            "inputs": [{"name": "x", "type": "tensor(float)", "shape": [-1]}],
            "outputs": [],
            "finite": True,
        },
        {"inputs": [{"name": "x", "type": "<script>", "shape": []}], "outputs": [], "finite": True},
    ],
)
def test_a_malformed_stored_signature_is_rejected(stored: object) -> None:
    with pytest.raises(InsituError) as e:
        OnnxSignature.from_json(stored)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT


def test_a_checker_that_fails_in_python_is_an_internal_error() -> None:
    with pytest.raises(InsituError) as e:
        onnx_signature(_linear(), _Child("raise SystemExit(1)"))
    assert e.value.code is ErrorCode.INTERNAL
