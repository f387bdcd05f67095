"""Per-model serving configuration: ``models/<name>/config.yaml``, parsed strictly.

Unknown keys, wrong types and inconsistent values are refused with ``ErrorCode.CONFIG``
naming the offending key, so a typo never silently falls back to a default.

Example ``config.yaml``::

    inputs:
      - {name: x, dtype: float32, shape: [-1, 16]}   # -1 first: the batch dimension
    outputs: [y]
    batching:
      enabled: true
      max_batch_size: 64
      max_queue_delay_us: 500
      preferred_batch_sizes: [16, 32, 64]
      max_queue_size: 1024
    version_policy: {latest: 2}                     # or {specific: [1, 3]}
    runtime: {intra_op_threads: 0}                  # 0: let ONNX Runtime decide
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import yaml

from insitu.errors import ErrorCode, InsituError

__all__ = [
    "ALLOWED_DTYPES",
    "BatchingConfig",
    "ModelConfig",
    "RuntimeConfig",
    "TensorSpec",
    "VersionPolicy",
    "parse_config",
    "validate_model_name",
]

# The only element types that cross the wire (see validation.py); kept small on purpose.
ALLOWED_DTYPES = frozenset({"float32", "float64", "int64", "int32"})

_MODEL_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
_TENSOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")
_MAX_RANK = 8


def _fail(where: str, what: str) -> InsituError:
    return InsituError(ErrorCode.CONFIG, f"{where}: {what}")


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a safe model name (also a directory name), else raise."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT,
            "model: must be 1-64 lowercase letters, digits, '-' or '_'",
        )
    return name


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model signature; ``-1`` marks a free dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def parse(cls, raw: object, where: str, *, batched: bool = True) -> TensorSpec:
        """Parse ``{name, dtype, shape}``; with ``batched`` the first dim must be -1."""
        d = _mapping(raw, where, required={"name", "dtype", "shape"})
        name = d["name"]
        if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name):
            raise _fail(f"{where}.name", "must be a tensor name ([A-Za-z_][A-Za-z0-9_.:/-]*)")
        dtype = d["dtype"]
        if dtype not in ALLOWED_DTYPES:
            raise _fail(f"{where}.dtype", f"must be one of {sorted(ALLOWED_DTYPES)}")
        shape = d["shape"]
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= _MAX_RANK
            or not all(_is_int(s) and (s == -1 or s >= 1) for s in shape)
        ):
            raise _fail(f"{where}.shape", f"must be 1-{_MAX_RANK} dims, each -1 or >= 1")
        if batched and shape[0] != -1:
            raise _fail(f"{where}.shape", "the first (batch) dimension must be -1")
        return cls(name, dtype, tuple(shape))


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching, with Triton's meaning for each knob."""

    enabled: bool = True
    max_batch_size: int = 64
    max_queue_delay_us: int = 0  # Triton's default: fuse only what queued while busy
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024  # queued requests; beyond it callers get RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk are servable: the ``latest`` N, or a ``specific`` list."""

    latest: int | None = 1
    specific: tuple[int, ...] = ()

    def select(self, versions: list[int]) -> list[int]:
        """The servable subset of ``versions``, ascending."""
        ordered = sorted(versions)
        if self.latest is not None:
            return ordered[-self.latest :]
        return [v for v in ordered if v in self.specific]


@dataclass(frozen=True)
class RuntimeConfig:
    intra_op_threads: int = 0  # 0: ONNX Runtime picks (one per physical core)


@dataclass(frozen=True)
class ModelConfig:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def input_spec(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)


def parse_config(text: str | bytes) -> ModelConfig:
    """Parse and validate a ``config.yaml`` document; raises CONFIG on any problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise _fail("config.yaml", "not valid YAML") from None
    top = _mapping(
        raw,
        "config",
        required={"inputs", "outputs"},
        optional={"batching", "version_policy", "runtime"},
    )
    inputs_raw = top["inputs"]
    if not isinstance(inputs_raw, list) or not inputs_raw:
        raise _fail("inputs", "must be a non-empty list")
    inputs = tuple(TensorSpec.parse(s, f"inputs[{i}]") for i, s in enumerate(inputs_raw))
    _unique([s.name for s in inputs], "inputs")
    outputs_raw = top["outputs"]
    if (
        not isinstance(outputs_raw, list)
        or not outputs_raw
        or not all(isinstance(o, str) and _TENSOR_NAME.fullmatch(o) for o in outputs_raw)
    ):
        raise _fail("outputs", "must be a non-empty list of tensor names")
    _unique(outputs_raw, "outputs")
    return ModelConfig(
        inputs=inputs,
        outputs=tuple(outputs_raw),
        batching=_batching(top.get("batching", {})),
        version_policy=_policy(top.get("version_policy", {"latest": 1})),
        runtime=_runtime(top.get("runtime", {})),
    )


def _batching(raw: object) -> BatchingConfig:
    d = _mapping(
        raw,
        "batching",
        optional={
            "enabled",
            "max_batch_size",
            "max_queue_delay_us",
            "preferred_batch_sizes",
            "max_queue_size",
        },
    )
    dflt = BatchingConfig()
    enabled = d.get("enabled", dflt.enabled)
    if not isinstance(enabled, bool):
        raise _fail("batching.enabled", "must be true or false")
    mbs = _int(d, "max_batch_size", dflt.max_batch_size, "batching", lo=1, hi=1 << 16)
    delay = _int(d, "max_queue_delay_us", dflt.max_queue_delay_us, "batching", lo=0, hi=10**7)
    mqs = _int(d, "max_queue_size", dflt.max_queue_size, "batching", lo=1, hi=1 << 20)
    pref = d.get("preferred_batch_sizes", [])
    if not isinstance(pref, list) or not all(_is_int(p) and 1 <= p <= mbs for p in pref):
        raise _fail(
            "batching.preferred_batch_sizes", "must be a list of sizes in 1..max_batch_size"
        )
    _unique(pref, "batching.preferred_batch_sizes")
    return BatchingConfig(enabled, mbs, delay, tuple(sorted(pref)), mqs)


def _policy(raw: object) -> VersionPolicy:
    d = _mapping(raw, "version_policy", optional={"latest", "specific"})
    if len(d) != 1:
        raise _fail("version_policy", "must have exactly one of 'latest' or 'specific'")
    if "latest" in d:
        return VersionPolicy(latest=_int(d, "latest", 1, "version_policy", lo=1, hi=1000))
    spec = d["specific"]
    if not isinstance(spec, list) or not spec or not all(_is_int(v) and v >= 1 for v in spec):
        raise _fail("version_policy.specific", "must be a non-empty list of versions >= 1")
    _unique(spec, "version_policy.specific")
    return VersionPolicy(latest=None, specific=tuple(sorted(spec)))


def _runtime(raw: object) -> RuntimeConfig:
    d = _mapping(raw, "runtime", optional={"intra_op_threads"})
    return RuntimeConfig(_int(d, "intra_op_threads", 0, "runtime", lo=0, hi=1024))


def _mapping(
    raw: object,
    where: str,
    *,
    required: AbstractSet[str] = frozenset(),
    optional: AbstractSet[str] = frozenset(),
) -> Mapping[str, Any]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise _fail(where, "must be a mapping")
    unknown = sorted(set(raw) - required - optional)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}")
    missing = sorted(required - set(raw))
    if missing:
        raise _fail(where, f"missing key(s) {missing}")
    return raw


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(d: Mapping[str, Any], key: str, default: int, where: str, *, lo: int, hi: int) -> int:
    v = d.get(key, default)
    if not _is_int(v) or not lo <= v <= hi:
        raise _fail(f"{where}.{key}", f"must be an integer in {lo}..{hi}")
    return int(v)


def _unique(items: list[Any], where: str) -> None:
    if len(set(items)) != len(items):
        raise _fail(where, "has duplicates")
