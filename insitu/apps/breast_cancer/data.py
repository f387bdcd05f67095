"""Demo data for the breast-cancer app: per-site CSVs and the central baseline.

:func:`write_site_csvs` splits scikit-learn's Breast Cancer Wisconsin table (569 real
patients) across hospitals with label skew (non-IID): hospital ``i`` of ``n`` gets a share
of malignant rows proportional to ``i + 1`` and of benign rows proportional to ``n - i``.

:func:`central_baseline` trains the same model with the same preprocessing on the union
of the sites' training rows and scores it on the union of their held-out rows. Each
site's ClientApp evaluates on exactly its held-out rows (``task.local_split``), so the
federation's aggregated ``eval-acc`` (weighted by ``num-examples``) is the accuracy on the
very same pooled test set: the two numbers compare like for like.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .bcw.task import FEATURES, LABEL, Net, evaluate, local_split, preprocess, set_arrays, train
from .bcw.task import new_arrays as _new_arrays

__all__ = ["DEFAULT_SITES", "central_baseline", "site_frames", "write_site_csvs"]

DEFAULT_SITES: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-c")


def _public_table() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame
    frame.columns = [str(c) for c in frame.columns]
    return frame[[*FEATURES, LABEL]]


def site_frames(sites: Sequence[str] = DEFAULT_SITES, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Each site's rows (features + ``target``), label-skewed and deterministic in ``seed``."""
    if not sites or len(set(sites)) != len(sites):
        raise ValueError("sites must be non-empty and distinct")
    table = _public_table()
    rng = np.random.default_rng(seed)
    count = len(sites)
    parts: dict[str, list[np.ndarray]] = {site: [] for site in sites}
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(table[LABEL].to_numpy() == label))
        weights = np.array([(i + 1) if label == 0 else (count - i) for i in range(count)], float)
        cuts = np.round(np.cumsum(weights / weights.sum())[:-1] * len(rows)).astype(int)
        for site, chunk in zip(sites, np.split(rows, cuts), strict=True):
            parts[site].append(chunk)
    frames = {}
    for site in sites:
        rows = rng.permutation(np.concatenate(parts[site]))
        frames[site] = table.iloc[rows].reset_index(drop=True)
    return frames


def write_site_csvs(
    out_dir: Path, sites: Sequence[str] = DEFAULT_SITES, seed: int = 0
) -> dict[str, Path]:
    """Write ``<out_dir>/<site>.csv`` for every site; returns the paths by site."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for site, frame in site_frames(sites, seed).items():
        path = out_dir / f"{site}.csv"
        frame.to_csv(path, index=False)
        paths[site] = path
    return paths


def central_baseline(
    seed: int = 0,
    sites: Sequence[str] = DEFAULT_SITES,
    *,
    epochs: int = 25,
    lr: float = 0.01,
    batch_size: int = 32,
    model_seed: int = 0,
) -> float:
    """Test accuracy of the model trained centrally on the union of the sites' train rows.

    ``epochs`` should equal rounds x local epochs of the federated run it is compared with.
    """
    train_x, train_y, test_x, test_y = [], [], [], []
    for frame in site_frames(sites, seed).values():
        features = preprocess(frame[list(FEATURES)].to_numpy())
        labels = frame[LABEL].to_numpy().astype(np.int64)
        train_idx, test_idx = local_split(len(labels))
        train_x.append(features[train_idx])
        train_y.append(labels[train_idx])
        test_x.append(features[test_idx])
        test_y.append(labels[test_idx])
    net = set_arrays(Net(), _new_arrays(model_seed))
    train(net, np.concatenate(train_x), np.concatenate(train_y),
          epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    _loss, accuracy = evaluate(net, np.concatenate(test_x), np.concatenate(test_y))
    return accuracy
