"""Helpers for the serving tests: small real models exported from torch, a local Ed25519
model-signing key (standing in for Vault transit), and config documents."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from site_node.serving import ArtifactMetadata, TensorSpec, ed25519_verifier
from site_node.serving.artifact import Verifier

MLP_IN = (TensorSpec("x", "float32", (-1, 16)),)
MLP_OUT = (TensorSpec("y", "float32", (-1, 4)),)
CNN_IN = (TensorSpec("image", "float32", (-1, 1, 8, 8)),)
CNN_OUT = (TensorSpec("logits", "float32", (-1, 10)),)


def mlp_config(
    *,
    max_batch_size: int = 32,
    delay_us: int = 2000,
    max_queue_size: int = 256,
    policy: str = "{latest: 2}",
    enabled: bool = True,
) -> str:
    return f"""
inputs:
  - {{name: x, dtype: float32, shape: [-1, 16]}}
outputs: [y]
batching:
  enabled: {"true" if enabled else "false"}
  max_batch_size: {max_batch_size}
  max_queue_delay_us: {delay_us}
  preferred_batch_sizes: [8, 16]
  max_queue_size: {max_queue_size}
version_policy: {policy}
runtime: {{intra_op_threads: 1}}
"""


CNN_CONFIG = """
inputs:
  - {name: image, dtype: float32, shape: [-1, 1, 8, 8]}
outputs: [logits]
batching: {max_batch_size: 32, max_queue_delay_us: 2000}
runtime: {intra_op_threads: 1}
"""


def _export(model: torch.nn.Module, example: torch.Tensor, inp: str, out: str) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter takes ~0.3 s per model; the dynamo one ~4 s.
        torch.onnx.export(
            model.eval(),
            (example,),
            buf,
            input_names=[inp],
            output_names=[out],
            dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )
    return buf.getvalue()


def export_mlp(seed: int) -> bytes:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return _export(m, torch.randn(2, 16), "x", "y")


def export_cnn(seed: int) -> bytes:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 10),
    )
    return _export(m, torch.randn(2, 1, 8, 8), "image", "logits")


@dataclass(frozen=True)
class Models:
    mlp: dict[int, bytes]  # version -> ONNX bytes (distinct weights per version)
    cnn: bytes


def reference(onnx_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Plain ONNX Runtime on CPU, no batcher: the ground truth."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


class Signer:
    """A local Ed25519 key in place of Vault transit `model-signing` (same algorithm and
    the same raw-message signature; the integration tests use real transit)."""

    def __init__(self, key_version: int = 1) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.key_version = key_version
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def verifier(self) -> Verifier:
        return ed25519_verifier(self.public_key)

    def sign(
        self,
        model: str,
        version: int,
        onnx_bytes: bytes,
        inputs: Sequence[TensorSpec] = MLP_IN,
        outputs: Sequence[TensorSpec] = MLP_OUT,
    ) -> ArtifactMetadata:
        meta = ArtifactMetadata.unsigned(
            model, version, onnx_bytes, inputs, outputs, key_version=self.key_version
        )
        return meta.with_signature(self._key.sign(meta.signing_message()))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: to prove a refusal changed nothing."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def rows(n: int, seed: int, shape: tuple[int, ...] = (16,)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
