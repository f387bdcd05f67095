"""The shipped breast-cancer Flower app: data split, strategies, DP, ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from insitu.apps.breast_cancer import central_baseline, site_frames, write_site_csvs
from insitu.apps.breast_cancer.bcw import server_app
from insitu.apps.breast_cancer.bcw.task import (
    FEATURES,
    LABEL,
    DPSettings,
    Net,
    export_onnx,
    load_table,
    local_split,
    new_arrays,
    preprocess,
    set_arrays,
    train,
)


def test_sites_are_disjoint_non_iid_and_cover_the_dataset(tmp_path: Path) -> None:
    paths = write_site_csvs(tmp_path, ["hospital-a", "hospital-b", "hospital-c"], seed=3)
    frames = {site: pd.read_csv(path) for site, path in paths.items()}
    assert sum(len(f) for f in frames.values()) == 569
    malignant_share = [float((f[LABEL] == 0).mean()) for f in frames.values()]
    assert malignant_share[0] < malignant_share[1] < malignant_share[2]  # label skew
    union = pd.concat(frames.values()).drop_duplicates()
    assert len(union) == 569  # disjoint: no row at two sites
    assert list(frames["hospital-a"].columns) == [*FEATURES, LABEL]
    again = site_frames(["hospital-a", "hospital-b", "hospital-c"], seed=3)
    pd.testing.assert_frame_equal(again["hospital-b"], frames["hospital-b"], check_dtype=False)


def test_local_table_loads_and_splits_deterministically(tmp_path: Path) -> None:
    path = write_site_csvs(tmp_path, ["only"], seed=0)["only"]
    features, labels = load_table(path)
    assert features.shape == (569, 30) and features.dtype == np.float32
    assert abs(float(features.mean())) < 0.05  # published constants standardize the data
    train_idx, test_idx = local_split(len(labels))
    assert len(test_idx) == round(569 * 0.2)
    assert not set(train_idx) & set(test_idx)
    assert (local_split(len(labels))[1] == test_idx).all()
    pd.read_csv(path).drop(columns=["mean radius"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="mean radius"):
        load_table(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="expected"):
        preprocess(np.zeros((2, 29)))


def test_central_baseline_is_a_good_model() -> None:
    assert central_baseline(seed=0, epochs=10) > 0.9


def test_dp_training_reports_epsilon_and_noise_costs_more() -> None:
    frame = site_frames(["a"], seed=0)["a"]
    features = preprocess(frame[list(FEATURES)].to_numpy())
    labels = frame[LABEL].to_numpy().astype(np.int64)
    outcomes = [
        train(set_arrays(Net(), new_arrays(0)), features, labels, epochs=1, lr=0.01,
              batch_size=64, dp=DPSettings(noise_multiplier=noise))
        for noise in (2.0, 0.8)
    ]
    assert all(o.epsilon is not None and o.epsilon > 0 for o in outcomes)
    assert outcomes[1].epsilon > outcomes[0].epsilon  # type: ignore[operator]
    assert train(Net(), features, labels, epochs=1, lr=0.01, batch_size=64).epsilon is None


@pytest.mark.parametrize(
    ("name", "cls"),
    [("fedavg", "FedAvg"), ("fedprox", "FedProx"), ("fedadam", "FedAdam"),
     ("trimmed-mean", "FedTrimmedAvg"), ("median", "FedMedian")],
)
def test_strategy_selection(name: str, cls: str) -> None:
    strategy = server_app.make_strategy({"strategy": name, "min-nodes": 3, "fraction-train": 0.5})
    assert type(strategy).__name__ == cls
    assert strategy.min_available_nodes == 3  # type: ignore[attr-defined]
    assert strategy.fraction_train == 0.5  # type: ignore[attr-defined]


def test_strategy_options_and_dp_wrappers() -> None:
    assert server_app.make_strategy({"strategy": "fedprox", "proximal-mu": 0.3}).proximal_mu == 0.3  # type: ignore[attr-defined]
    wrapped = server_app.make_strategy({"server-dp": "server-fixed", "server-dp-clip": 5.0})
    assert type(wrapped).__name__ == "DifferentialPrivacyServerSideFixedClipping"
    wrapped = server_app.make_strategy({"server-dp": "client-fixed"})
    assert type(wrapped).__name__ == "DifferentialPrivacyClientSideFixedClipping"
    with pytest.raises(ValueError, match="unknown strategy"):
        server_app.make_strategy({"strategy": "fedsomething"})
    with pytest.raises(ValueError, match="server-dp"):
        server_app.make_strategy({"server-dp": "maybe"})


def test_onnx_export_matches_torch() -> None:
    torch.manual_seed(1)
    net = Net()
    for p in net.parameters():  # non-trivial weights, as after training
        p.data.normal_(0, 0.5)
    from flwr.app import ArrayRecord

    data = export_onnx(ArrayRecord(net.state_dict()))
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "features" and out.name == "logits"
    assert inp.shape[1] == 30 and inp.type == "tensor(float)"
    for batch in (1, 7, 64):
        features = np.random.default_rng(batch).normal(size=(batch, 30)).astype(np.float32)
        (logits,) = session.run(["logits"], {"features": features})
        expected = net.eval()(torch.from_numpy(features)).detach().numpy()
        assert logits.shape == (batch, 2)
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
