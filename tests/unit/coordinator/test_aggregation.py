import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import strategy_utils

from coordinator.aggregation import aggregate_arrayrecords


def _records(seed: int) -> list[RecordDict]:
    rng = np.random.default_rng(seed)
    out = []
    for n in (10, 30, 60):
        out.append(RecordDict({
            "arrays": ArrayRecord({"w": Array(rng.normal(size=(4, 5)).astype(np.float32)),
                                   "b": Array(rng.normal(size=(5,)).astype(np.float32)),
                                   "f": Array(np.asfortranarray(rng.normal(size=(3, 2))))}),
            "metrics": MetricRecord({"num-examples": n}),
        }))
    return out


def test_matches_flowers_aggregation() -> None:
    ours = aggregate_arrayrecords(_records(1), "num-examples")
    theirs = strategy_utils.aggregate_arrayrecords(_records(1), "num-examples")
    assert list(ours.keys()) == list(theirs.keys())
    for k in ours:
        a, b = ours[k].numpy(), theirs[k].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_does_not_modify_the_updates() -> None:
    recs = _records(2)
    before = [r["arrays"]["w"].numpy().copy() for r in recs]
    aggregate_arrayrecords(recs, "num-examples")
    for r, b in zip(recs, before, strict=True):
        np.testing.assert_array_equal(r["arrays"]["w"].numpy(), b)
