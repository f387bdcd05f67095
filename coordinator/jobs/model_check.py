"""Check a job's final model before the coordinator signs it.

Two checks, both on output of the job's own (untrusted) ServerApp:

1. :func:`check_final_arrays`: the strategy's final arrays have exactly the names, shapes
   and dtypes of the arrays the job sent to sites in its first round, and are finite.
2. :func:`check_onnx`: the ONNX export loads in ONNX Runtime, has tensor inputs and
   outputs, gives finite outputs on a zero-filled input, and keeps the I/O signature of the
   latest registered version of the same model (so a site serving v1 can canary v2).

The ONNX file is untrusted input to ONNX Runtime's parser, so it is only ever opened in a
sandboxed child (``python -m coordinator.jobs.model_check``, started through a
:class:`~insitu.sandbox.Launcher`). The child reads the bytes on stdin and prints one JSON
line: the signature, or the *class name* of what failed (never the exception's text, which
may echo bytes of the file). The parent reads a bounded report and parses it strictly.

Names in errors come from the job's ServerApp: they are shown as ``repr`` of at most 64
characters.

Example::

    check_final_arrays(final, reference=array_spec(first_round_arrays))
    previous = OnnxSignature.from_json(stored) if stored is not None else None
    signature = check_onnx(onnx, launcher, previous=previous, previous_version="v3")
    stored_next = signature.to_json()  # a JSON object, for the version's manifest
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Final

import numpy as np

from insitu.errors import ErrorCode, InsituError
from insitu.sandbox import Launcher

__all__ = [
    "ArraySpec",
    "OnnxSignature",
    "TensorSignature",
    "array_spec",
    "check_final_arrays",
    "check_onnx",
    "onnx_signature",
]

ArraySpec = dict[str, tuple[tuple[int, ...], str]]
"""Array name -> (shape, numpy dtype as ``str(dtype)``)."""

Dim = int | str | None
"""One dimension of an ONNX tensor: static size, symbolic name, or unknown."""

TensorSignature = tuple[str, str, tuple[Dim, ...]]
"""(name, ONNX Runtime type such as ``tensor(float)``, shape)."""

_MODULE: Final = "coordinator.jobs.model_check"
_SHOWN: Final = 64  # characters of a job-supplied name shown in an error
_MAX_ONNX: Final = 1024 * 1024 * 1024  # as coordinator.serverapp.host accepts
_MAX_REPORT: Final = 1024 * 1024  # bytes of the child's JSON report
_MAX_TENSORS: Final = 256  # inputs, and outputs, per model
_MAX_NAME: Final = 1024
_MAX_RANK: Final = 64
_TYPE: Final = re.compile(r"[a-z0-9_(),]{1,128}")
_TENSOR_TYPE: Final = re.compile(r"tensor\([a-z0-9_]{1,32}\)")
_CLASS: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INFERENCE: Final = re.compile(r"inference failed \(([A-Za-z_][A-Za-z0-9_]{0,63})\)")
_EXIT_REFUSED: Final = 2


def _refuse(detail: str) -> InsituError:
    return InsituError(ErrorCode.FAILED_PRECONDITION, detail)


def _shown(name: str) -> str:
    return repr(name[:_SHOWN])


# 1. Final arrays -------------------------------------------------------------------------


def array_spec(arrays: Mapping[str, np.ndarray]) -> ArraySpec:
    """The names, shapes and dtypes of ``arrays``, in their order."""
    return {name: (tuple(int(d) for d in a.shape), str(a.dtype)) for name, a in arrays.items()}


def check_final_arrays(arrays: Mapping[str, np.ndarray], reference: ArraySpec) -> None:
    """Refuse (FAILED_PRECONDITION, naming the first offending array) final arrays that are
    empty, lack or add a name relative to ``reference``, change a shape or dtype, are not
    numeric, or hold NaN or infinity."""
    if not arrays:
        raise _refuse("the ServerApp's strategy returned no model")
    for name, (shape, dtype) in reference.items():
        if name not in arrays:
            raise _refuse(
                f"the final model lacks array {_shown(name)} that the job sent to "
                f"sites (shape {shape}, dtype {dtype[:_SHOWN]})"
            )
    for name in arrays:
        if name not in reference:
            raise _refuse(
                f"the final model has array {_shown(name)}, which the job did not "
                "send to sites in its first round"
            )
    for name, (shape, dtype) in reference.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray):
            raise _refuse(f"final array {_shown(name)} is not a numpy array")
        if a.shape != shape:
            raise _refuse(f"final array {_shown(name)} has shape {a.shape}, expected {shape}")
        if str(a.dtype) != dtype:
            raise _refuse(
                f"final array {_shown(name)} has dtype {str(a.dtype)[:_SHOWN]}, "
                f"expected {dtype[:_SHOWN]}"
            )
        if a.dtype.kind not in "biufc":
            raise _refuse(
                f"final array {_shown(name)} is not numeric (dtype {str(a.dtype)[:_SHOWN]})"
            )
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise _refuse(
                f"final array {_shown(name)} is not finite "
                f"({bad} of {a.size} values are NaN or infinite)"
            )


# 2. ONNX signature -----------------------------------------------------------------------


class _Malformed(Exception):
    """A signature report that breaks the format; the text is ours, never the report's."""


def _closed_object(value: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise _Malformed(f"{what} must be an object with keys {sorted(keys)}")
    return value


def _parse_dim(d: object) -> Dim:
    if d is None:
        return None
    if isinstance(d, bool):
        raise _Malformed("a dimension is a boolean")
    if isinstance(d, int):
        if not 0 <= d < 2**63:
            raise _Malformed("a dimension is out of range")
        return d
    if isinstance(d, str) and 0 < len(d) <= _MAX_NAME:
        return d
    raise _Malformed("a dimension is not an integer, a name or null")


def _parse_tensors(value: object, what: str) -> tuple[TensorSignature, ...]:
    if not isinstance(value, list) or len(value) > _MAX_TENSORS:
        raise _Malformed(f"{what} must be a list of at most {_MAX_TENSORS}")
    out: list[TensorSignature] = []
    for item in value:
        t = _closed_object(item, {"name", "type", "shape"}, f"each of {what}")
        name, kind, shape = t["name"], t["type"], t["shape"]
        if not isinstance(name, str) or len(name) > _MAX_NAME:
            raise _Malformed(f"a name in {what} is not a string of at most {_MAX_NAME}")
        if not isinstance(kind, str) or not _TYPE.fullmatch(kind):
            raise _Malformed(f"a type in {what} is malformed")
        if not isinstance(shape, list) or len(shape) > _MAX_RANK:
            raise _Malformed(f"a shape in {what} is not a list of at most {_MAX_RANK}")
        out.append((name, kind, tuple(_parse_dim(d) for d in shape)))
    if len({name for name, _, _ in out}) != len(out):
        raise _Malformed(f"{what} repeat a name")
    return tuple(out)


@dataclass(frozen=True)
class OnnxSignature:
    """What ONNX Runtime reports for a model: its inputs and outputs, and whether one run on
    zero-filled inputs (symbolic or unknown dims set to 1) gave only finite outputs
    (``finite`` is False too when that run was impossible: an input or output that is not
    a tensor)."""

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    finite: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON object (for the registry's manifest) that :meth:`from_json` reads back."""

        def tensors(ts: tuple[TensorSignature, ...]) -> list[dict[str, Any]]:
            return [{"name": n, "type": t, "shape": list(s)} for n, t, s in ts]

        return {
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
            "finite": self.finite,
        }

    @classmethod
    def from_json(cls, value: object) -> OnnxSignature:
        """Parse a parsed-JSON object strictly (exact keys, types, bounds); INVALID_ARGUMENT
        if it is malformed."""
        try:
            return cls._parse(value)
        except _Malformed as e:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"malformed ONNX signature: {e}"
            ) from None

    @classmethod
    def _parse(cls, value: object) -> OnnxSignature:
        obj = _closed_object(value, {"inputs", "outputs", "finite"}, "a signature")
        if not isinstance(obj["finite"], bool):
            raise _Malformed("finite must be a boolean")
        return cls(
            _parse_tensors(obj["inputs"], "inputs"),
            _parse_tensors(obj["outputs"], "outputs"),
            obj["finite"],
        )


def _strict_json(line: bytes) -> object:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise _Malformed("a key repeats")
        return dict(pairs)

    def no_constant(name: str) -> None:
        raise _Malformed("NaN or infinity in the report")

    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise _Malformed("the report is not ASCII") from None
    if text.count("\n") != 1 or not text.endswith("\n"):
        raise _Malformed("the report is not one line")
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except ValueError:
        raise _Malformed("the report is not JSON") from None


def _feed(stdin: IO[bytes], data: bytes) -> None:
    # The child may die (or be killed) before reading everything: that is its report's job.
    with contextlib.suppress(OSError):
        stdin.write(data)
    with contextlib.suppress(OSError):
        stdin.close()


def _run_child(onnx: bytes, launcher: Launcher, timeout_s: float) -> tuple[int, bytes, bool]:
    """(exit code, at most _MAX_REPORT + 1 bytes of stdout, whether it was killed on time)."""
    # -P: the working directory (a HostLauncher's may be the job's app) never shadows modules.
    argv = launcher.command([sys.executable, "-P", "-m", _MODULE])
    try:
        # stderr is dropped: ONNX Runtime's messages quote the file.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=launcher.env,
            cwd=launcher.cwd,
            start_new_session=True,
        )
    except OSError as e:
        raise InsituError(
            ErrorCode.INTERNAL, f"cannot start the ONNX checker ({type(e).__name__})"
        ) from None
    assert proc.stdin and proc.stdout
    expired = threading.Event()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def on_timeout() -> None:
        expired.set()
        kill()

    timer = threading.Timer(timeout_s, on_timeout)
    timer.daemon = True
    timer.start()
    threading.Thread(
        target=_feed, args=(proc.stdin, onnx), daemon=True, name="onnx-check-feed"
    ).start()
    try:
        out = proc.stdout.read(_MAX_REPORT + 1)
        if len(out) > _MAX_REPORT:
            kill()
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill()
            proc.wait()
        proc.stdout.close()
    return code, out, expired.is_set()


def onnx_signature(onnx: bytes, launcher: Launcher, *, timeout_s: float = 120) -> OnnxSignature:
    """Load ``onnx`` in ONNX Runtime inside ``launcher``'s sandbox and return what it reports.

    Raises FAILED_PRECONDITION when the model does not load (naming only the error's
    class), fails its zero-input run, crashes the checker, exceeds ``timeout_s`` (the
    sandbox is killed) or yields a report outside the format's bounds; INTERNAL when the
    checker cannot start or fails in Python (exit 1) rather than in ONNX Runtime."""
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "timeout_s must be > 0")
    if not onnx:
        raise _refuse("the ONNX export is empty")
    if len(onnx) > _MAX_ONNX:
        raise _refuse(f"the ONNX export is larger than {_MAX_ONNX} bytes")
    code, out, expired = _run_child(onnx, launcher, timeout_s)
    if expired:
        raise _refuse(f"the ONNX export's check did not finish within {timeout_s:g} s")
    if len(out) > _MAX_REPORT:
        raise _refuse("the ONNX export's signature is too large to check")
    if code == 1:  # an uncaught Python error: the checker's environment, not the model
        raise InsituError(ErrorCode.INTERNAL, "the ONNX checker failed (exit 1)")
    if code not in (0, _EXIT_REFUSED):
        raise _refuse(
            f"the ONNX export could not be checked: ONNX Runtime's checker ended with code {code}"
        )
    try:
        report = _strict_json(out)
        if code == _EXIT_REFUSED:
            error = _closed_object(report, {"error"}, "an error report")["error"]
            if not isinstance(error, str):
                raise _Malformed("error must be a string")
            if _CLASS.fullmatch(error):
                raise _refuse(f"the ONNX export does not load in ONNX Runtime ({error})")
            if m := _INFERENCE.fullmatch(error):
                raise _refuse(f"the ONNX export fails to run on a zero-filled input ({m.group(1)})")
            raise _Malformed("unknown error report")
        return OnnxSignature._parse(report)
    except _Malformed as e:
        raise _refuse(f"the ONNX export could not be checked: malformed report ({e})") from None


def _shape_text(shape: tuple[Dim, ...]) -> str:
    dims = ["?" if d is None else str(d) if isinstance(d, int) else repr(d[:16]) for d in shape]
    return "[" + ", ".join(dims) + "]"


def _same_dims(new: tuple[Dim, ...], old: tuple[Dim, ...]) -> bool:
    """Same rank; static dims equal; a dynamic dim (any symbol) stays dynamic."""
    return len(new) == len(old) and all(
        (isinstance(a, int) and a == b) if isinstance(b, int) else not isinstance(a, int)
        for a, b in zip(new, old, strict=True)
    )


def _difference(
    new: tuple[TensorSignature, ...], old: tuple[TensorSignature, ...], kind: str, label: str
) -> str | None:
    now = {name: (t, shape) for name, t, shape in new}
    before = {name: (t, shape) for name, t, shape in old}
    for name, (t, shape) in before.items():
        if name not in now:
            return f"{kind} {_shown(name)} of {label} is missing"
        t2, shape2 = now[name]
        if t2 != t:
            return f"{kind} {_shown(name)} type {t2} differs from {label}'s {t}"
        if not _same_dims(shape2, shape):
            return (
                f"{kind} {_shown(name)} shape {_shape_text(shape2)} differs from "
                f"{label}'s {_shape_text(shape)}"
            )
    for name in now:
        if name not in before:
            return f"{kind} {_shown(name)} is new (not in {label})"
    return None


def check_onnx(
    onnx: bytes,
    launcher: Launcher,
    *,
    previous: OnnxSignature | None,
    previous_version: str = "the latest version",
    timeout_s: float = 120,
) -> OnnxSignature:
    """The signature of ``onnx`` once it passes, else FAILED_PRECONDITION naming the first
    failure: it must load (:func:`onnx_signature`); have at least one input and one output,
    all tensors; give finite outputs on a zero-filled input; and, when ``previous`` (the
    latest registered version's signature, called ``previous_version`` in the error) is
    given, keep its inputs' and outputs' names, element types, ranks and static dims."""
    sig = onnx_signature(onnx, launcher, timeout_s=timeout_s)
    if not sig.inputs or not sig.outputs:
        raise _refuse(
            f"the ONNX export has {len(sig.inputs)} inputs and {len(sig.outputs)} "
            "outputs; it needs at least one of each"
        )
    for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
        for name, t, _shape in tensors:
            if not _TENSOR_TYPE.fullmatch(t):
                raise _refuse(f"the ONNX export's {kind} {_shown(name)} is a {t}, not a tensor")
    if not sig.finite:
        raise _refuse(
            "the ONNX export's outputs on a zero-filled input are not finite (NaN or infinity)"
        )
    if previous is not None:
        label = previous_version[:_SHOWN]
        diff = _difference(sig.inputs, previous.inputs, "input", label) or _difference(
            sig.outputs, previous.outputs, "output", label
        )
        if diff is not None:
            raise _refuse(
                f"the ONNX export changes the model's signature: {diff} (a new "
                "version must keep it, so that sites can canary it)"
            )
    return sig


# The sandboxed child ---------------------------------------------------------------------

# ONNX Runtime element type -> numpy dtype of the zero-filled input.
_ZERO_DTYPES: Final = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


class UnsupportedInputType(Exception):
    """An input whose element type numpy cannot zero-fill (bfloat16, float8, ...)."""


def _describe(args: Any) -> list[dict[str, Any]]:
    return [{"name": a.name, "type": a.type, "shape": list(a.shape)} for a in args]


def _zero_run_finite(session: Any, inputs: list[dict[str, Any]]) -> bool:
    if any(not _TENSOR_TYPE.fullmatch(i["type"]) for i in inputs):
        return False  # nothing to zero-fill; check_onnx refuses such a model anyway
    feeds: dict[str, np.ndarray] = {}
    for i in inputs:
        dtype = _ZERO_DTYPES.get(i["type"])
        if dtype is None:
            raise UnsupportedInputType
        shape = tuple(d if isinstance(d, int) else 1 for d in i["shape"])
        feeds[i["name"]] = (
            np.full(shape, "", dtype) if dtype is np.object_ else np.zeros(shape, dtype)
        )
    outputs = session.run(None, feeds)
    return all(
        isinstance(o, np.ndarray) and (o.dtype.kind not in "fc" or bool(np.isfinite(o).all()))
        for o in outputs
    )


def _main() -> int:
    # Only this JSON line goes to stdout: anything ONNX Runtime prints goes to stderr.
    report = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)

    def emit(obj: dict[str, Any]) -> None:
        report.write(json.dumps(obj, allow_nan=False) + "\n")
        report.flush()

    data = sys.stdin.buffer.read(_MAX_ONNX + 1)
    if len(data) > _MAX_ONNX:
        emit({"error": "ModelTooLarge"})
        return _EXIT_REFUSED
    import onnxruntime as ort  # here: the parent never loads ONNX Runtime

    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        options.add_session_config_entry("session.load_model_format", "ONNX")
        session = ort.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs, outputs = _describe(session.get_inputs()), _describe(session.get_outputs())
    except Exception as e:  # the text may quote the file: only the class name leaves
        emit({"error": type(e).__name__})
        return _EXIT_REFUSED
    try:
        finite = _zero_run_finite(session, inputs)
    except Exception as e:
        emit({"error": f"inference failed ({type(e).__name__})"})
        return _EXIT_REFUSED
    emit({"inputs": inputs, "outputs": outputs, "finite": finite})
    return 0


if __name__ == "__main__":
    sys.exit(_main())
