"""Site-enforced DP benchmark: clip-and-noise of one update against raw torch noise.

``site_node.training.dp.clip_and_noise`` on a 25M-parameter float32 update (split over 4
arrays, as a model's layers are), from a reply and a global model already in memory:
the update, its float64-accumulated L2 norm, the clip, Gaussian noise, into fresh output
arrays. Ours draws its noise from the site's CSPRNG (AES-256-CTR keystream, Box-Muller);
the baseline is the least any Gaussian mechanism must do with torch's own (non-
cryptographic) generator: ``torch.randn(n, generator=g)`` and ``x.add_(noise)`` over the
same number of float32 values, with torch's threads. Ratio = baseline time / ours (higher
is better). Target >= 0.5x: the noise dominates, and ours makes about three more passes
over memory.

Run: .venv/bin/python bench/bench_site_dp.py [--params 25000000] [--arrays 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET = 0.5


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ms(ts: list[float]) -> str:
    return ", ".join(f"{t * 1e3:.0f}" for t in ts) + " ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--params", type=int, default=25_000_000, help="float32 values per update")
    ap.add_argument("--arrays", type=int, default=4, help="arrays the update is split over")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    import torch

    from site_node.training.dp import DpPolicy, clip_and_noise

    la = os.getloadavg()
    print(f"machine: {os.cpu_count()} cpus, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, load average {la[0]:.2f}")
    rng = np.random.default_rng(0)
    sizes = [args.params // args.arrays] * args.arrays
    sizes[-1] += args.params - sum(sizes)
    base = {"arrays": {f"layer{i}.weight": rng.standard_normal(n, dtype=np.float32)
                       for i, n in enumerate(sizes)}}
    reply = {"arrays": {k: v + rng.standard_normal(v.size, dtype=np.float32) * 0.01
                        for k, v in base["arrays"].items()}}
    for arrays in (*base.values(), *reply.values()):  # as Flower hands them: read-only
        for v in arrays.values():
            v.flags.writeable = False
    policy = DpPolicy(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    g = torch.Generator()
    g.manual_seed(0)
    x = torch.zeros(args.params, dtype=torch.float32)

    def ours() -> None:
        release = clip_and_noise(reply, base, policy)  # the site's path: CSPRNG noise
        assert release.clipped

    def raw() -> None:
        noise = torch.randn(args.params, generator=g, dtype=torch.float32)
        x.add_(noise)

    ours()  # warm both up: first-touch of torch's kernels and allocator
    raw()
    t_ours, t_raw = [], []
    for _ in range(args.repeats):
        gc.collect()
        t_ours.append(_timed(ours))
        gc.collect()
        t_raw.append(_timed(raw))
    o, r = statistics.median(t_ours), statistics.median(t_raw)
    ratio = r / o
    print(f"\n== clip-and-noise, {args.params / 1e6:.0f}M float32 over {args.arrays} arrays, "
          f"median of {args.repeats} ==")
    print(f"clip_and_noise                   {o * 1e3:8.1f} ms  ({_ms(t_ours)})")
    print(f"raw torch randn + add_           {r * 1e3:8.1f} ms  ({_ms(t_raw)})")
    verdict = "MET" if ratio >= TARGET else "MISSES"
    print("\n== summary ==")
    print(f"{'measure':44s} {'value':>12s} {'target':>10s}  result")
    print(f"{'clip-and-noise vs raw torch randn+add_':44s} {ratio:>11.2f}x "
          f"{'>= ' + str(TARGET) + 'x':>10s}  {verdict}")
    print(f"{'clip_and_noise time':44s} {o * 1e3:>9.1f} ms {'report':>10s}  -")
    print(f"{'raw torch randn + add_ time':44s} {r * 1e3:>9.1f} ms {'report':>10s}  -")


if __name__ == "__main__":
    main()
