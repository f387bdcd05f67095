"""Model, preprocessing, local training and ONNX export for the breast-cancer Flower app.

The data is scikit-learn's Breast Cancer Wisconsin (Diagnostic) set: 30 real-valued
features per patient, label ``target`` (0 malignant, 1 benign).

Preprocessing needs nothing from other sites: ``log1p`` then standardization with fixed
constants computed once from the public reference dataset and shipped here. Every site
and the central baseline therefore see identically scaled features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "FEATURES",
    "LABEL",
    "DPSettings",
    "Net",
    "TrainOutcome",
    "evaluate",
    "export_onnx",
    "load_table",
    "local_split",
    "new_arrays",
    "preprocess",
    "set_arrays",
    "train",
]

FEATURES: tuple[str, ...] = (
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
    "mean fractal dimension", "radius error", "texture error", "perimeter error",
    "area error", "smoothness error", "compactness error", "concavity error",
    "concave points error", "symmetry error", "fractal dimension error", "worst radius",
    "worst texture", "worst perimeter", "worst area", "worst smoothness",
    "worst compactness", "worst concavity", "worst concave points", "worst symmetry",
    "worst fractal dimension",
)
LABEL = "target"
# Mean and standard deviation of log1p(feature) over the public dataset (569 rows).
_LOG1P_MEAN = np.array([
    2.69123, 2.9882, 4.50068, 6.36511, 0.091914, 0.098145, 0.0825518, 0.0470951, 0.166232,
    0.0608828, 0.324878, 0.769123, 1.26202, 3.42109, 0.00701189, 0.0250099, 0.0310035,
    0.0117086, 0.0203018, 0.00378428, 2.81367, 3.25739, 4.64138, 6.61735, 0.12411, 0.21938,
    0.228383, 0.106792, 0.253597, 0.0804717,
], dtype=np.float64)
_LOG1P_STD = np.array([
    0.222031, 0.209233, 0.24811, 0.48185, 0.0127827, 0.0466054, 0.0700518, 0.0362359,
    0.0230158, 0.00660938, 0.166197, 0.22654, 0.395514, 0.705251, 0.0029688, 0.0171747,
    0.0274508, 0.00606697, 0.00802333, 0.00262038, 0.260162, 0.230904, 0.287919, 0.553686,
    0.0200733, 0.117289, 0.154362, 0.0582592, 0.0465621, 0.0164323,
], dtype=np.float64)
SPLIT_SEED = 20_240_601  # fixed: sites and the central baseline split rows identically
TEST_FRACTION = 0.2

Features = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


class Net(nn.Module):
    """A small MLP: 30 features -> 2 logits. No BatchNorm, so Opacus can wrap it."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(len(FEATURES), 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(features)
        return out


def preprocess(raw: npt.NDArray[np.floating]) -> Features:
    """log1p, then standardize with the published constants."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(FEATURES):
        raise ValueError(f"expected [rows, {len(FEATURES)}] features, got {list(raw.shape)}")
    scaled = (np.log1p(np.clip(raw, 0.0, None)) - _LOG1P_MEAN) / _LOG1P_STD
    out: Features = scaled.astype(np.float32)
    return out


def load_table(path: str | Path) -> tuple[Features, Labels]:
    """Preprocessed features and labels from the site's local CSV or Parquet file."""
    import pandas as pd

    path = Path(path)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in (*FEATURES, LABEL) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path.name} lacks {len(missing)} expected column(s), e.g. {missing[0]!r}"
        )
    features = preprocess(frame[list(FEATURES)].to_numpy())
    labels = frame[LABEL].to_numpy().astype(np.int64)
    return features, labels


def local_split(count: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(train, test) row indices of a site's table: a fixed-seed 80/20 split."""
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    n_test = max(1, round(count * TEST_FRACTION))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def new_arrays(seed: int = 0) -> ArrayRecord:
    """Initial global model parameters."""
    torch.manual_seed(seed)
    return ArrayRecord(Net().state_dict())


def set_arrays(net: Net, arrays: ArrayRecord) -> Net:
    net.load_state_dict(arrays.to_torch_state_dict())
    return net


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD with Opacus: per-sample clipping plus Gaussian noise."""

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5


@dataclass(frozen=True)
class TrainOutcome:
    loss: float
    num_examples: int
    epsilon: float | None  # spent by this call (None without DP)


def train(
    net: Net,
    features: Features,
    labels: Labels,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: str = "cpu",
    proximal_mu: float = 0.0,
    dp: DPSettings | None = None,
    seed: int = 0,
) -> TrainOutcome:
    """Train ``net`` in place on local rows; optional FedProx term and DP-SGD."""
    threads = torch.get_num_threads()
    # A model this small only loses to intra-op threading (measured ~6x on 2 cores).
    torch.set_num_threads(1)
    try:
        return _train(net, features, labels, epochs=epochs, lr=lr, batch_size=batch_size,
                      device=device, proximal_mu=proximal_mu, dp=dp, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _train(
    net: Net,
    features: Features,
    labels: Labels,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: str,
    proximal_mu: float,
    dp: DPSettings | None,
    seed: int,
) -> TrainOutcome:
    torch.manual_seed(seed)
    net.to(device)
    net.train()
    dataset = TensorDataset(torch.tensor(features), torch.tensor(labels))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    optimizer: torch.optim.Optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    model: nn.Module = net
    engine = None
    if dp is not None:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private(
            module=net, optimizer=optimizer, data_loader=loader,
            noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
        )
    global_params = [p.detach().clone() for p in net.parameters()] if proximal_mu > 0 else []
    criterion = nn.CrossEntropyLoss()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for batch_x, batch_y in loader:
            if len(batch_y) == 0:  # Poisson sampling can draw an empty batch
                continue
            batch_x, batch_y = batch_x.to(device), batch_y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(batch_x), batch_y)
            if global_params:
                # FedProx: keep the local model near the global one. (Under DP-SGD the
                # optimizer uses per-sample gradients only, so this term has no effect.)
                prox = sum(
                    ((p - g) ** 2).sum()
                    for p, g in zip(net.parameters(), global_params, strict=True)
                )
                loss = loss + (proximal_mu / 2) * prox
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * len(batch_y)
            seen += len(batch_y)
    epsilon = float(engine.get_epsilon(dp.delta)) if engine is not None and dp else None
    net.to("cpu")
    return TrainOutcome(loss=total / max(seen, 1), num_examples=len(labels), epsilon=epsilon)


@torch.no_grad()
def evaluate(
    net: Net, features: Features, labels: Labels, device: str = "cpu"
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on the given rows."""
    net.to(device)
    net.eval()
    logits = net(torch.tensor(features, device=device))
    target = torch.tensor(labels, device=device)
    loss = float(nn.functional.cross_entropy(logits, target).item())
    accuracy = float((logits.argmax(dim=1) == target).float().mean().item())
    net.to("cpu")
    return loss, accuracy


def export_onnx(arrays: ArrayRecord) -> bytes:
    """The model as ONNX: input ``features`` [batch, 30] float32, output ``logits`` [batch, 2]."""
    net = set_arrays(Net(), arrays).eval()
    example = (torch.zeros(2, len(FEATURES), dtype=torch.float32),)
    program = torch.onnx.export(
        net, example, input_names=["features"], output_names=["logits"],
        dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
    )
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no program")
    return bytes(program.model_proto.SerializeToString())
