"""One ONNX Runtime inference session, tuned for serving, with the provider it really got.

Providers are tried in the order ``CUDAExecutionProvider``, ``CPUExecutionProvider``,
filtered by what the installed wheel offers. ``onnxruntime-gpu`` lists CUDA even on a
machine without a GPU and then falls back to CPU at session creation (logging an error),
so the provider actually in use is read back from the session, and after one failed CUDA
attempt this process stops asking for CUDA.

IO binding: on CUDA, inputs are bound from host memory and outputs are bound on the
device and copied back once, which spares ORT the per-call staging allocations. On CPU
there are no device copies to save, so plain ``run`` is used (``io_binding=True`` forces
the bound path anyway; tests use it to exercise that code on CPU).

Example::

    sess = OnnxSession(path, intra_op_threads=4)
    print(sess.provider)            # "CUDAExecutionProvider" or "CPUExecutionProvider"
    out = sess.run({"x": batch})    # {"y": ndarray}
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from insitu.errors import ErrorCode, InsituError
from site_node.serving.config import TensorSpec

__all__ = ["PREFERRED_PROVIDERS", "OnnxSession", "check_signature"]

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CUDA = "CUDAExecutionProvider"

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}

_cuda_unusable = threading.Event()  # set after CUDA was asked for and not obtained


def _providers(requested: Sequence[str] | None) -> list[str]:
    available = set(ort.get_available_providers())
    wanted = [p for p in (requested or PREFERRED_PROVIDERS) if p in available]
    if _cuda_unusable.is_set():
        wanted = [p for p in wanted if p != CUDA]
    return wanted or ["CPUExecutionProvider"]


class OnnxSession:
    """A thread-safe ONNX Runtime session (``run`` may be called from many threads)."""

    def __init__(
        self,
        model: Path | bytes,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        io_binding: bool | None = None,
    ) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = intra_op_threads
        # One batch at a time per session: parallelism comes from intra-op threads, and
        # a second pool would only contend for the same cores.
        opts.inter_op_num_threads = 1
        wanted = _providers(providers)
        source = str(model) if isinstance(model, Path) else model
        try:
            self._session = ort.InferenceSession(source, sess_options=opts, providers=wanted)
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT, f"model.onnx: ONNX Runtime cannot load it ({_short(e)})"
            ) from None
        self.providers: list[str] = list(self._session.get_providers())
        self.provider: str = self.providers[0]
        if CUDA in wanted and CUDA not in self.providers:
            _cuda_unusable.set()
            log.info("CUDA provider unavailable; serving on %s", self.provider)
        self._device = "cuda" if self.provider == CUDA else "cpu"
        self._io_binding = (self.provider == CUDA) if io_binding is None else io_binding
        self.input_specs = tuple(_spec(a) for a in self._session.get_inputs())
        self.output_specs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [s.name for s in self.output_specs]

    @property
    def uses_io_binding(self) -> bool:
        return self._io_binding

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every graph output by name."""
        if self._io_binding:
            return self._run_bound(inputs)
        values = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, values, strict=True))

    def _run_bound(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self._session.io_binding()  # per call: a binding is not thread-safe
        for name, arr in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in self._output_names:
            binding.bind_output(name, self._device)
        self._session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, values, strict=True))


def check_signature(
    declared_inputs: Sequence[TensorSpec],
    declared_outputs: Sequence[TensorSpec],
    session: OnnxSession,
) -> None:
    """Raise INVALID_ARGUMENT unless the graph's inputs and outputs match the declaration.

    Names and dtypes must be equal. A declared ``-1`` needs a dynamic graph dim (a graph
    with a fixed batch dim cannot be batched); a declared size needs the same size or a
    dynamic dim in the graph.
    """
    for part, declared, actual in (
        ("inputs", declared_inputs, session.input_specs),
        ("outputs", declared_outputs, session.output_specs),
    ):
        got = {s.name: s for s in actual}
        if set(got) != {s.name for s in declared}:
            raise InsituError(
                ErrorCode.INVALID_ARGUMENT,
                f"{part}: graph has {sorted(got)}, artifact declares "
                f"{sorted(s.name for s in declared)}",
            )
        for d in declared:
            g = got[d.name]
            where = f"{part}['{d.name}']"
            if g.dtype != d.dtype:
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"{where}.dtype: graph has {g.dtype}, artifact declares {d.dtype}",
                )
            ok = len(g.shape) == len(d.shape) and all(
                gd == -1 or gd == dd for gd, dd in zip(g.shape, d.shape, strict=True)
            )
            if not ok:
                raise InsituError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"{where}.shape: graph has {list(g.shape)}, artifact declares {list(d.shape)}",
                )


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type, arg.type)  # unsupported types fail check_signature
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


def _short(e: Exception) -> str:
    # ORT messages may embed file paths; keep only the first line, bounded.
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
