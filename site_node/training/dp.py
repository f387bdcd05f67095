"""Site-enforced differential privacy for a model update, applied before it leaves the site.

The site daemon, outside the job's sandbox, clips and noises the ClientApp's reply with
the Gaussian mechanism, and accounts for it with its own accountant (Opacus' RDP
accountant), whatever the app claims about its own privacy.

What is guaranteed, and what is not:

- **Update-level DP for the site's dataset.** The released update is
  ``base + clip(reply - base) + N(0, (noise_multiplier * clip_norm)^2 I)``, where
  ``clip`` scales the *whole* update (all arrays of all records as one vector) to an L2
  norm of at most ``clip_norm``. Any change to the dataset, up to replacing all of it,
  moves the clipped update by at most ``clip_norm``: one release is one Gaussian
  mechanism with sensitivity ``clip_norm``. The releases of one job are composed by RDP
  (sample rate 1.0, no subsampling amplification), giving (epsilon, delta).
- **Not record-level DP**, unless the app also trains with DP-SGD (e.g. Opacus) and
  accounts for that itself. Update-level DP protects the dataset as a whole; the epsilon
  it reports is far more conservative per record, but it is a different statement.
- **Adjacency.** The statement is about the site's contribution being present or not
  (the update moves by at most ``clip_norm``). Replacing the whole dataset with another
  can move it by up to ``2 * clip_norm``: for that reading, halve the noise multiplier.
- The noise comes from a CSPRNG: an AES-256-CTR keystream under a fresh key from
  ``os.urandom`` per release, turned into normals by Box-Muller (the radius from a 32-bit
  uniform in float64, so tails reach 6.6 standard deviations). A seeded PRNG would not do:
  torch's Mersenne Twister keeps 32 bits of a seed, few enough to search for the noise
  and subtract it.
- Floating-point arithmetic is as usual: the clip holds up to rounding, and the noise is
  not snapped against floating-point attacks on the Gaussian mechanism.

Example::

    policy = DpPolicy.parse({"clip_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5},
                            "/site/datasets.toml [datasets.bcw]")
    accountant = DpAccountant(policy)
    ledger.charge("bcw", job_id, accountant.charge_for_next())   # before release
    release = clip_and_noise(reply_arrays, global_arrays, policy)
    accountant.record_release()
    send(release.arrays)

torch and Opacus are imported only when noise is added or epsilon computed, so a daemon
that merely parses policies never imports them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from insitu.errors import ErrorCode, InsituError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DpAccountant",
    "DpPolicy",
    "DpRelease",
    "clip_and_noise",
    "epsilon_for",
]

Arrays = Mapping[str, Mapping[str, np.ndarray]]

_FIELDS: Final = ("clip_norm", "noise_multiplier", "delta")
_FLOATS: Final = frozenset({np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)})
# Elements per step: the update's norm is summed in float64 over chunks this size, and the
# noise is drawn into a buffer this size, so each step stays in cache (measured: 2^16 for
# the norm, 2^18 for the noise beat whole-array passes and smaller chunks).
_NORM_CHUNK: Final = 1 << 16
_NOISE_CHUNK: Final = 1 << 18
_EPS: Final = 1e-12


@dataclass(frozen=True)
class DpPolicy:
    """The site's DP setting for one dataset: L2 clip, noise multiplier and target delta."""

    clip_norm: float
    noise_multiplier: float
    delta: float

    @classmethod
    def parse(cls, raw: Mapping[str, object], where: str) -> DpPolicy:
        """The policy in ``raw`` (a ``[dp]`` table); CONFIG errors name the field."""
        if not isinstance(raw, Mapping):
            raise _config(where, "dp must be a table")
        unknown = sorted(str(k) for k in raw if k not in _FIELDS)
        if unknown:
            raise _config(where, f"dp.{unknown[0]} is not a DP setting; expected "
                                 + ", ".join(f"dp.{f}" for f in _FIELDS))
        for name in _FIELDS:
            if name not in raw:
                raise _config(where, f"dp.{name} is missing")
        policy = cls(
            clip_norm=_number(raw, "clip_norm", where),
            noise_multiplier=_number(raw, "noise_multiplier", where),
            delta=_number(raw, "delta", where),
        )
        policy.validate(where)
        return policy

    def validate(self, where: str) -> None:
        """CONFIG error naming the field unless every field is a finite number in range."""
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _config(where, f"dp.{name} must be a number")
            if not math.isfinite(value):
                raise _config(where, f"dp.{name} must be finite, got {value}")
        if self.clip_norm <= 0:
            raise _config(where, f"dp.clip_norm must be > 0, got {self.clip_norm}")
        if self.noise_multiplier <= 0:
            raise _config(where, f"dp.noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise _config(where, f"dp.delta must be in (0, 1), got {self.delta}")

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise per coordinate."""
        return self.noise_multiplier * self.clip_norm


@dataclass(frozen=True)
class DpRelease:
    """What may leave the site: the noised arrays, and the update's norm before clipping."""

    arrays: dict[str, dict[str, np.ndarray]]
    norm: float
    clipped: bool


def _config(where: str, detail: str) -> InsituError:
    return InsituError(ErrorCode.CONFIG, f"{where}: {detail}")


def _number(raw: Mapping[str, object], name: str, where: str) -> float:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _config(where, f"dp.{name} must be a number")
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        raise _config(where, f"dp.{name} must be finite") from None


def _invalid(detail: str) -> InsituError:
    return InsituError(ErrorCode.INVALID_ARGUMENT, detail)


def _check_pairs(reply: Arrays, base: Arrays) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """The (record, array, reply, base) quadruples, in reply order; names, never values."""
    if set(reply) != set(base):
        raise _invalid(f"reply records {sorted(reply)} differ from the global model's "
                       f"{sorted(base)}")
    pairs = []
    for record, arrays in reply.items():
        if set(arrays) != set(base[record]):
            raise _invalid(f"record {record!r}: reply arrays {sorted(arrays)} differ from the "
                           f"global model's {sorted(base[record])}")
        for name, r in arrays.items():
            b = base[record][name]
            label = f"{record}/{name}"
            if not isinstance(r, np.ndarray) or not isinstance(b, np.ndarray):
                raise _invalid(f"array {label!r} is not a numpy array")
            if r.shape != b.shape:
                raise _invalid(f"array {label!r}: reply shape {r.shape} differs from the "
                               f"global model's {b.shape}")
            if r.dtype != b.dtype:
                raise _invalid(f"array {label!r}: reply dtype {r.dtype} differs from the "
                               f"global model's {b.dtype}")
            if r.dtype.newbyteorder("=") not in _FLOATS:
                raise _invalid(f"array {label!r} ({r.dtype}) is not a floating-point array; "
                               "DP cannot apply")
            pairs.append((record, name, r, b))
    return pairs


def _flat_view(arr: np.ndarray) -> torch.Tensor:
    """A 1-D torch view of ``arr`` (a copy only if it is strided or byte-swapped)."""
    import torch

    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr).reshape(-1)
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():  # Flower's arrays are read-only; we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


class _GaussianStream:
    """Normal samples from an AES-256-CTR keystream (fresh random key and nonce)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
        self._encryptor = cipher.encryptor()
        self._zeros = bytes(8 * ((_NOISE_CHUNK + 1) // 2))

    def fill_(self, out: torch.Tensor, std: float) -> None:
        """Write ``out.numel()`` samples of N(0, std^2) into ``out`` (1-D, float)."""
        import torch

        k = out.numel()
        m = (k + 1) // 2
        keystream = bytearray(self._encryptor.update(self._zeros[:8 * m]))
        bits = torch.frombuffer(keystream, dtype=torch.int32)
        # Box-Muller: radius from u1 in (0, 1) at full 32-bit resolution, angle from u2.
        u1 = bits[:m].to(torch.float64).add_(2.0**31 + 0.5).mul_(2.0**-32)
        radius = u1.log_().mul_(-2.0).sqrt_().mul_(std).to(out.dtype)
        angle = bits[m:].to(out.dtype).add_(2.0**31).mul_(2.0 * math.pi / 2.0**32)
        out[:m].copy_(angle.cos().mul_(radius))
        out[m:].copy_(angle[: k - m].sin().mul_(radius[: k - m]))


def clip_and_noise(
    reply: Arrays,
    base: Arrays,
    policy: DpPolicy,
    *,
    unsafe_generator: torch.Generator | None = None,
) -> DpRelease:
    """``base + clip(reply - base) + N(0, (noise_multiplier * clip_norm)^2)``, per coordinate.

    ``reply`` and ``base`` map record name -> array name -> array, with the same names,
    shapes and floating dtypes (float16/32/64); the update is all their differences as one
    vector. Its L2 norm (accumulated in float64) is scaled to at most ``clip_norm``. The
    result keeps each array's dtype and shape, in fresh buffers; the inputs are not
    written. The noise comes from a CSPRNG (see the module docstring); ``unsafe_generator``
    replaces it with a seeded torch generator, for reproducible tests only.
    INVALID_ARGUMENT, naming the array and never its values, for mismatched names, shapes
    or dtypes, non-float arrays, and non-finite values.
    """
    import torch

    policy.validate("DP policy")
    pairs = _check_pairs(reply, base)
    stream = _GaussianStream() if unsafe_generator is None else None

    # 1. The update, into the output buffers, and its norm in float64.
    work: list[tuple[str, str, np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    acc64 = torch.empty(_NORM_CHUNK, dtype=torch.float64)
    total = 0.0
    for record, name, r, b in pairs:
        out_np = np.empty(r.shape, dtype=r.dtype.newbyteorder("="))
        out, rt, bt = torch.from_numpy(out_np.reshape(-1)), _flat_view(r), _flat_view(b)
        torch.sub(rt, bt, out=out)
        squares = 0.0
        for i in range(0, out.numel(), _NORM_CHUNK):
            chunk = out[i:i + _NORM_CHUNK]
            if chunk.dtype != torch.float64:
                chunk = acc64[:chunk.numel()].copy_(chunk)
            squares += float(torch.dot(chunk, chunk))
        if not math.isfinite(squares):
            what = ("has non-finite values" if not (np.isfinite(r).all() and np.isfinite(b).all())
                    else "has an update too large to clip")
            raise _invalid(f"array {record + '/' + name!r} {what}; DP cannot apply")
        total += squares
        work.append((record, name, out_np, out, rt, bt))
    norm = math.sqrt(total)
    scale = min(1.0, policy.clip_norm / (norm + _EPS))
    clipped = scale < 1.0

    # 2. base + scale * update + noise, chunk by chunk, the noise drawn into one buffer.
    std = policy.noise_std
    released: dict[str, dict[str, np.ndarray]] = {record: {} for record in reply}
    for record, name, out_np, out, rt, bt in work:
        noise = torch.empty(min(_NOISE_CHUNK, out.numel()), dtype=out.dtype)
        for i in range(0, out.numel(), _NOISE_CHUNK):
            o = out[i:i + _NOISE_CHUNK]
            z = noise[:o.numel()]
            if stream is not None:
                stream.fill_(z, std)
            else:
                z.normal_(0.0, std, generator=unsafe_generator)
            if clipped:
                torch.add(bt[i:i + _NOISE_CHUNK], o, alpha=scale, out=o)
                o.add_(z)
            else:  # base + (reply - base) is reply, without its rounding
                torch.add(rt[i:i + _NOISE_CHUNK], z, out=o)
        released[record][name] = out_np
    return DpRelease(arrays=released, norm=norm, clipped=clipped)


def epsilon_for(policy: DpPolicy, releases: int) -> float:
    """Epsilon at ``policy.delta`` after ``releases`` updates, by Opacus' RDP accountant.

    Each release is one Gaussian mechanism on the whole dataset (sample rate 1.0,
    ``policy.noise_multiplier``); zero releases spend nothing.
    """
    if isinstance(releases, bool) or not isinstance(releases, int) or releases < 0:
        raise _invalid(f"releases must be an integer >= 0, got {releases!r}")
    if releases == 0:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant: Any = RDPAccountant()
    accountant.history = [(policy.noise_multiplier, 1.0, releases)]
    return float(accountant.get_epsilon(delta=policy.delta))


class DpAccountant:
    """The site's own accountant for one job on one dataset: update-level DP by RDP.

    Ask :meth:`charge_for_next` and charge the ledger *before* a release; call
    :meth:`record_release` once it is released. Not thread-safe: one job, one caller.
    """

    def __init__(self, policy: DpPolicy) -> None:
        policy.validate("DP policy")
        self._policy = policy
        self._releases = 0

    @property
    def policy(self) -> DpPolicy:
        return self._policy

    @property
    def releases(self) -> int:
        """Updates released so far."""
        return self._releases

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, at ``policy.delta``."""
        return self.epsilon_after(self._releases)

    def epsilon_after(self, releases: int) -> float:
        """Epsilon after ``releases`` updates in all (pure: ignores what was recorded)."""
        return epsilon_for(self._policy, releases)

    def charge_for_next(self) -> float:
        """The epsilon the next release adds to what was spent so far."""
        return self.epsilon_after(self._releases + 1) - self.epsilon_after(self._releases)

    def record_release(self) -> None:
        """Count one more released update."""
        self._releases += 1
