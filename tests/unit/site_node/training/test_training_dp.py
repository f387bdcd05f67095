"""Site-enforced DP: the clip, the noise, the refusals, and the accountant against Opacus."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from insitu.errors import ErrorCode, InsituError
from site_node.training.dp import (
    DpAccountant,
    DpPolicy,
    clip_and_noise,
    epsilon_for,
)

WHERE = "/site/datasets.toml [datasets.bcw]"
QUIET = 1e-12  # a noise multiplier that leaves the clip visible (validate wants > 0)
Arrays = dict[str, dict[str, np.ndarray]]


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _model(seed: int = 0, dtype: Any = np.float32) -> Arrays:
    rng = np.random.default_rng(seed)
    return {
        "arrays": {
            "fc1.weight": rng.standard_normal((30, 16)).astype(dtype),
            "fc1.bias": rng.standard_normal(16).astype(dtype),
        },
        "extra": {"scale": rng.standard_normal((2, 3)).astype(dtype)},
    }


def _update(reply: Arrays, base: Arrays) -> np.ndarray:
    return np.concatenate([
        (reply[r][a].astype(np.float64) - base[r][a].astype(np.float64)).ravel()
        for r in reply for a in reply[r]
    ])


def _shift(base: Arrays, norm: float, seed: int = 1) -> Arrays:
    """``base`` plus an update of exactly L2 norm ``norm`` (in float64)."""
    rng = np.random.default_rng(seed)
    direction = {r: {a: rng.standard_normal(v.shape) for a, v in arrays.items()}
                 for r, arrays in base.items()}
    total = math.sqrt(sum(float((d**2).sum()) for arrays in direction.values()
                          for d in arrays.values()))
    return {r: {a: (base[r][a].astype(np.float64) + d * (norm / total)).astype(base[r][a].dtype)
                for a, d in arrays.items()} for r, arrays in direction.items()}


# -- the clip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_update_is_clipped_to_the_norm_along_its_direction(dtype: Any) -> None:
    base = _model(dtype=dtype)
    reply = _shift(base, 50.0)
    policy = DpPolicy(clip_norm=2.0, noise_multiplier=QUIET, delta=1e-5)
    release = clip_and_noise(reply, base, policy, unsafe_generator=_gen())
    assert release.clipped
    assert release.norm == pytest.approx(50.0, rel=1e-5)
    released = _update(release.arrays, base)
    assert np.linalg.norm(released) <= 2.0 * (1 + 1e-5)
    assert np.linalg.norm(released) == pytest.approx(2.0, rel=1e-4)
    np.testing.assert_allclose(released, _update(reply, base) * (2.0 / 50.0), atol=1e-5)


def test_small_update_is_unchanged_but_for_noise() -> None:
    base = _model(dtype=np.float64)
    reply = _shift(base, 0.5)
    release = clip_and_noise(reply, base, DpPolicy(1.0, QUIET, 1e-5), unsafe_generator=_gen())
    assert not release.clipped
    assert release.norm == pytest.approx(0.5, rel=1e-9)
    for r, arrays in reply.items():
        for a, v in arrays.items():
            np.testing.assert_allclose(release.arrays[r][a], v, rtol=0, atol=1e-9)


def test_release_keeps_names_shapes_dtypes_and_leaves_inputs_alone() -> None:
    for dtype in (np.float16, np.float32, np.float64):
        base, reply = _model(0, dtype), _model(1, dtype)
        before = {r: {a: v.copy() for a, v in arrays.items()} for r, arrays in reply.items()}
        for arrays in (*base.values(), *reply.values()):
            for v in arrays.values():
                v.flags.writeable = False  # as Flower hands them over
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # read-only inputs must not warn
            release = clip_and_noise(reply, base, DpPolicy(1.0, 1.0, 1e-5), unsafe_generator=_gen())
        assert list(release.arrays) == list(reply)
        for r, arrays in reply.items():
            assert list(release.arrays[r]) == list(arrays)
            for a, v in arrays.items():
                out = release.arrays[r][a]
                assert out.shape == v.shape and out.dtype == v.dtype
                assert out.flags.writeable and not np.shares_memory(out, v)
                np.testing.assert_array_equal(v, before[r][a])


def test_strided_and_byte_swapped_arrays_are_handled() -> None:
    rng = np.random.default_rng(3)
    big = rng.standard_normal((8, 8))
    base = {"r": {"w": big[:, ::2], "b": np.zeros(4, dtype=">f8")}}
    reply = {"r": {"w": big[:, ::2] + 0.01, "b": np.full(4, 0.01, dtype=">f8")}}
    release = clip_and_noise(reply, base, DpPolicy(10.0, QUIET, 1e-5), unsafe_generator=_gen())
    assert not release.clipped
    np.testing.assert_allclose(release.arrays["r"]["w"], reply["r"]["w"], atol=1e-9)
    np.testing.assert_allclose(release.arrays["r"]["b"], 0.01, atol=1e-9)


def test_empty_update_is_fine() -> None:
    base: Arrays = {"arrays": {"w": np.zeros(0, np.float32)}}
    release = clip_and_noise(base, base, DpPolicy(1.0, 1.0, 1e-5))
    assert release.norm == 0 and not release.clipped
    assert release.arrays["arrays"]["w"].shape == (0,)


# -- the noise --------------------------------------------------------------------------------


def test_noise_std_is_noise_multiplier_times_clip_norm() -> None:
    n = 1_000_000
    base = {"a": {"w": np.zeros(n // 2, np.float32)}, "b": {"w": np.ones(n // 2, np.float32)}}
    policy = DpPolicy(clip_norm=3.0, noise_multiplier=0.7, delta=1e-5)
    release = clip_and_noise(base, base, policy)  # the CSPRNG path the site uses
    noise = _update(release.arrays, base)
    assert noise.size == n
    assert noise.std() == pytest.approx(0.7 * 3.0, rel=0.02)
    assert abs(noise.mean()) < 5 * 2.1 / math.sqrt(n)
    # Gaussian, not merely the right spread: the mass beyond 2 and 3 sigma, and kurtosis.
    z = noise / (0.7 * 3.0)
    assert np.mean(np.abs(z) > 2) == pytest.approx(0.0455, abs=0.002)
    assert np.mean(np.abs(z) > 3) == pytest.approx(0.0027, abs=0.0004)
    assert np.mean(z**4) == pytest.approx(3.0, abs=0.05)
    # Every coordinate gets its own draw, not one chunk's noise repeated.
    assert len(np.unique(noise)) > 0.99 * n


def test_noise_follows_the_generator_and_is_fresh_without_one() -> None:
    base, reply = _model(0), _model(1)
    policy = DpPolicy(1.0, 1.0, 1e-5)
    a = clip_and_noise(reply, base, policy, unsafe_generator=_gen(5))
    b = clip_and_noise(reply, base, policy, unsafe_generator=_gen(5))
    np.testing.assert_array_equal(_update(a.arrays, base), _update(b.arrays, base))
    c = clip_and_noise(reply, base, policy)
    d = clip_and_noise(reply, base, policy)
    assert not np.allclose(_update(c.arrays, base), _update(d.arrays, base))


def test_raw_rows_sent_as_weights_do_not_come_back_out() -> None:
    """A ClientApp that smuggles data rows out as 'weights' gets only noise through."""
    rng = np.random.default_rng(11)
    rows = rng.uniform(0, 100, size=(64, 30)).astype(np.float32)
    base = {"arrays": {"fc.weight": rng.standard_normal((64, 30)).astype(np.float32)}}
    reply = {"arrays": {"fc.weight": base["arrays"]["fc.weight"] + rows}}
    release = clip_and_noise(reply, base, DpPolicy(1.0, 1.0, 1e-5), unsafe_generator=_gen(11))
    assert release.clipped
    out = release.arrays["arrays"]["fc.weight"]
    smuggled = np.concatenate([rows, reply["arrays"]["fc.weight"]])
    for released_row in out:
        for raw_row in smuggled:
            assert not np.allclose(released_row, raw_row, rtol=0, atol=1e-3)
    # What does come out is base + noise: the rows' contribution is at most clip_norm.
    residual = out.astype(np.float64) - base["arrays"]["fc.weight"]
    assert residual.std() == pytest.approx(1.0, rel=0.1)


# -- refusals ---------------------------------------------------------------------------------


def _refused(reply: Arrays, base: Arrays, code: ErrorCode = ErrorCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(InsituError) as info:
        clip_and_noise(reply, base, DpPolicy(1.0, 1.0, 1e-5), unsafe_generator=_gen())
    assert info.value.code is code
    return str(info.value)


SECRET = 12345.678  # a value that must never appear in an error


def _secret_model() -> Arrays:
    return {"arrays": {"w": np.full((3, 4), SECRET, np.float32),
                       "b": np.full(4, SECRET, np.float32)}}


@pytest.mark.parametrize(
    ("mutate", "names"),
    [
        (lambda m: m.update({"other": m.pop("arrays")}), ["arrays", "other"]),
        (lambda m: m["arrays"].update({"c": m["arrays"].pop("b")}), ["'b'", "'c'"]),
        (lambda m: m["arrays"].update({"w": np.full((4, 3), SECRET, np.float32)}),
         ["arrays/w", "(4, 3)", "(3, 4)"]),
        (lambda m: m["arrays"].update({"b": m["arrays"]["b"].astype(np.float64)}),
         ["arrays/b", "float64", "float32"]),
    ],
    ids=["record-names", "array-names", "shape", "dtype"],
)
def test_mismatched_reply_is_refused_naming_the_array(mutate: Any, names: list[str]) -> None:
    base, reply = _secret_model(), _secret_model()
    mutate(reply)
    message = _refused(reply, base)
    for name in names:
        assert name in message
    assert "12345" not in message


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64])
def test_non_float_arrays_are_refused(dtype: Any) -> None:
    base = {"arrays": {"w": np.ones(3, np.float32), "steps": np.ones(2, dtype)}}
    message = _refused(base, base)
    assert "arrays/steps" in message and "not a floating-point array" in message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("side", ["reply", "base"])
def test_non_finite_values_are_refused(bad: float, side: str) -> None:
    base, reply = _secret_model(), _secret_model()
    (reply if side == "reply" else base)["arrays"]["b"][2] = bad
    message = _refused(reply, base)
    assert "arrays/b" in message and "non-finite" in message
    assert "12345" not in message


def test_an_invalid_policy_is_refused_before_any_noise() -> None:
    base = _model()
    with pytest.raises(InsituError) as info:
        clip_and_noise(base, base, DpPolicy(1.0, 0.0, 1e-5))
    assert info.value.code is ErrorCode.CONFIG and "dp.noise_multiplier" in str(info.value)


# -- the policy -------------------------------------------------------------------------------


GOOD = {"clip_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5}


def test_policy_parses() -> None:
    policy = DpPolicy.parse(GOOD, WHERE)
    assert policy == DpPolicy(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    assert DpPolicy.parse({**GOOD, "clip_norm": 3}, WHERE).clip_norm == 3.0
    assert policy.noise_std == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"clip_norm": None}, "clip_norm", "missing"),
        ({"delta": None}, "delta", "missing"),
        ({"epsilon": 1.0}, "epsilon", "not a DP setting"),
        ({"clip_norm": "1.0"}, "clip_norm", "number"),
        ({"noise_multiplier": True}, "noise_multiplier", "number"),
        ({"delta": [1e-5]}, "delta", "number"),
        ({"clip_norm": math.inf}, "clip_norm", "finite"),
        ({"noise_multiplier": math.nan}, "noise_multiplier", "finite"),
        ({"clip_norm": 10**400}, "clip_norm", "finite"),
        ({"clip_norm": 0.0}, "clip_norm", "> 0"),
        ({"clip_norm": -1.0}, "clip_norm", "> 0"),
        ({"noise_multiplier": 0}, "noise_multiplier", "> 0"),
        ({"delta": 0.0}, "delta", "(0, 1)"),
        ({"delta": 1.0}, "delta", "(0, 1)"),
        ({"delta": -1e-5}, "delta", "(0, 1)"),
    ],
)
def test_policy_errors_name_the_field(change: dict[str, Any], field: str, words: str) -> None:
    raw = {**GOOD, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(InsituError) as info:
        DpPolicy.parse(raw, WHERE)
    assert info.value.code is ErrorCode.CONFIG
    message = str(info.value)
    assert f"{WHERE}: dp.{field}" in message and words in message


def test_policy_must_be_a_table() -> None:
    with pytest.raises(InsituError, match=r"dp must be a table"):
        DpPolicy.parse([1.0, 1.0, 1e-5], WHERE)  # type: ignore[arg-type]


def test_validate_catches_a_directly_built_policy() -> None:
    DpPolicy(1.0, 1.0, 0.5).validate(WHERE)
    with pytest.raises(InsituError, match=r"dp\.delta"):
        DpPolicy(1.0, 1.0, 2.0).validate(WHERE)
    with pytest.raises(InsituError, match=r"dp\.clip_norm must be a number"):
        DpPolicy(True, 1.0, 0.5).validate(WHERE)


# -- the accountant ---------------------------------------------------------------------------


SIGMAS = [0.5, 0.8, 1.0, 1.1, 2.0, 5.0]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_epsilon_equals_opacus_computed_independently(sigma: float) -> None:
    policy = DpPolicy(clip_norm=1.0, noise_multiplier=sigma, delta=1e-5)
    accountant = DpAccountant(policy)
    stepped = RDPAccountant()
    for releases in range(1, 6):
        stepped.step(noise_multiplier=sigma, sample_rate=1.0)
        by_history = RDPAccountant()
        by_history.history = [(sigma, 1.0, releases)]
        expected = by_history.get_epsilon(1e-5)
        assert stepped.get_epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
        assert epsilon_for(policy, releases) == pytest.approx(expected, rel=1e-6)
        assert accountant.epsilon_after(releases) == pytest.approx(expected, rel=1e-6)


def test_epsilon_depends_on_delta_and_grows_with_releases() -> None:
    loose, tight = DpPolicy(1.0, 1.0, 1e-3), DpPolicy(1.0, 1.0, 1e-7)
    assert epsilon_for(loose, 0) == 0.0
    assert epsilon_for(loose, 3) < epsilon_for(tight, 3)
    values = [epsilon_for(loose, r) for r in range(6)]
    assert all(a < b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("sigma", [0.7, 1.1, 3.0])
def test_charges_sum_to_the_total(sigma: float) -> None:
    accountant = DpAccountant(DpPolicy(clip_norm=0.5, noise_multiplier=sigma, delta=1e-6))
    assert accountant.releases == 0 and accountant.epsilon == 0.0
    charged = 0.0
    for r in range(1, 6):
        step = accountant.charge_for_next()
        assert step > 0
        assert accountant.releases == r - 1  # asking does not count a release
        charged += step
        accountant.record_release()
        assert accountant.releases == r
        assert charged == pytest.approx(accountant.epsilon_after(r), rel=1e-9)
        assert accountant.epsilon == pytest.approx(accountant.epsilon_after(r), rel=1e-12)


def test_accountant_refuses_bad_input() -> None:
    with pytest.raises(InsituError) as info:
        DpAccountant(DpPolicy(1.0, -1.0, 1e-5))
    assert info.value.code is ErrorCode.CONFIG
    with pytest.raises(InsituError) as info:
        epsilon_for(DpPolicy(1.0, 1.0, 1e-5), -1)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
