"""config.yaml is parsed strictly: every mistake names its key."""

from __future__ import annotations

import pytest
from serving_support import mlp_config

from insitu.errors import ErrorCode, InsituError
from site_node.serving import VersionPolicy, parse_config


def test_full_config_parses() -> None:
    c = parse_config(mlp_config(max_batch_size=32, delay_us=700, max_queue_size=9))
    assert [(s.name, s.dtype, s.shape) for s in c.inputs] == [("x", "float32", (-1, 16))]
    assert c.outputs == ("y",)
    b = c.batching
    assert (b.enabled, b.max_batch_size, b.max_queue_delay_us, b.max_queue_size) == (
        True, 32, 700, 9,
    )  # fmt: skip
    assert b.preferred_batch_sizes == (8, 16)
    assert c.version_policy == VersionPolicy(latest=2)
    assert c.runtime.intra_op_threads == 1


def test_defaults_apply_when_sections_are_absent() -> None:
    c = parse_config("inputs: [{name: x, dtype: int64, shape: [-1]}]\noutputs: [y]\n")
    assert c.batching.enabled and c.batching.max_batch_size == 64
    assert c.version_policy == VersionPolicy(latest=1)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "inputs: [{name: x, dtype: float32, shape: [-1, 2]}]\noutputs: [y]\nbatchng: {}\n",
            "batchng",
        ),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1, 2]}]\noutputs: [y]\nbatching: {max_batch: 3}\n",
            "max_batch",
        ),
        ("inputs: [{name: x, dtype: float32, shape: [-1, 2], extra: 1}]\noutputs: [y]\n", "extra"),
        ("inputs: [{name: x, dtype: float16, shape: [-1, 2]}]\noutputs: [y]\n", "inputs[0].dtype"),
        ("inputs: [{name: x, dtype: float32, shape: [4, 2]}]\noutputs: [y]\n", "inputs[0].shape"),
        ("inputs: [{name: x, dtype: float32, shape: [-1, 0]}]\noutputs: [y]\n", "inputs[0].shape"),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1]}, {name: x, dtype: float32, shape: [-1]}]\noutputs: [y]\n",
            "inputs",
        ),
        ("inputs: []\noutputs: [y]\n", "inputs"),
        ("inputs: [{name: x, dtype: float32, shape: [-1]}]\n", "missing"),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1]}]\noutputs: [y]\nbatching: {max_batch_size: 4, preferred_batch_sizes: [8]}\n",
            "preferred_batch_sizes",
        ),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1]}]\noutputs: [y]\nbatching: {max_batch_size: true}\n",
            "max_batch_size",
        ),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1]}]\noutputs: [y]\nbatching: {max_queue_size: 0}\n",
            "max_queue_size",
        ),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1]}]\noutputs: [y]\nversion_policy: {latest: 1, specific: [1]}\n",
            "version_policy",
        ),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1]}]\noutputs: [y]\nversion_policy: {specific: []}\n",
            "specific",
        ),
        (
            "inputs: [{name: x, dtype: float32, shape: [-1]}]\noutputs: [y]\nruntime: {threads: 2}\n",
            "threads",
        ),
        ("inputs: [\n", "YAML"),
        ("- just a list\n", "config"),
    ],
)
def test_mistakes_are_refused_naming_the_key(text: str, where: str) -> None:
    with pytest.raises(InsituError) as e:
        parse_config(text)
    assert e.value.code is ErrorCode.CONFIG
    assert where in e.value.detail


def test_version_policy_selects_latest_or_specific() -> None:
    assert VersionPolicy(latest=2).select([3, 1, 5, 4]) == [4, 5]
    assert VersionPolicy(latest=None, specific=(1, 4, 9)).select([1, 2, 3, 4]) == [1, 4]
    assert VersionPolicy(latest=3).select([]) == []
