"""Device check: a sandboxed job process granted one GPU sees exactly that device and
trains on it; one granted none sees no GPU. Run on a GPU machine:

    python scripts/sandbox_gpu_check.py [--gpu 0]

It prints one line per fact and exits non-zero if one does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insitu.sandbox import (
    BwrapLauncher,
    Limits,
    SandboxSpec,
    require_bwrap,
    sandbox_env,
)

INSIDE = r"""
import glob, json, os, time
out = {"dev": sorted(glob.glob("/dev/nvidia*")), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
       "uid": os.getuid()}
import torch
out["count"] = torch.cuda.device_count()
if out["count"]:
    out["name"] = torch.cuda.get_device_name(0)
    torch.manual_seed(0)
    x = torch.randn(4096, 64, device="cuda")
    y = (x[:, :1] > 0).float()
    nn = torch.nn
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward(); opt.step(); losses.append(loss.item())
    out["loss_first"], out["loss_last"] = losses[0], losses[-1]
    out["param_device"] = str(next(net.parameters()).device)
print(json.dumps(out))
"""


def run(gpu: int | None) -> dict[str, object]:
    limits = Limits(memory_mb=32768, cpu_seconds=600, processes=512, open_files=4096,
                    scratch_mb=256, message_timeout_s=600.0)
    launcher = BwrapLauncher(SandboxSpec(limits=limits, gpu=gpu,
                                         env=sandbox_env(os.environ, gpu=gpu is not None)),
                             bwrap=require_bwrap())
    done = subprocess.run(launcher.command([sys.executable, "-c", INSIDE]), env=launcher.env,
                          cwd=launcher.cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"sandboxed process failed (gpu={gpu}): exit {done.returncode}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", type=int, default=0)
    args = parser.parse_args()
    granted, none = run(args.gpu), run(None)
    print("granted:", json.dumps(granted))
    print("not granted:", json.dumps(none))
    facts = {
        "granted sandbox sees exactly one CUDA device": granted["count"] == 1,
        f"only /dev/nvidia{args.gpu} of the GPU nodes is visible": [
            d for d in granted["dev"] if d[len("/dev/nvidia"):].isdigit()  # type: ignore[union-attr]
        ] == [f"/dev/nvidia{args.gpu}"],
        "training ran on cuda and the loss fell": granted.get("param_device") == "cuda:0"
        and float(granted["loss_last"]) < float(granted["loss_first"]) * 0.5,  # type: ignore[arg-type]
        "a sandbox granted no GPU sees none": none["count"] == 0
        and not [d for d in none["dev"] if "nvidia" in d],  # type: ignore[union-attr]
        "runs as uid 65534": granted["uid"] == 65534,
    }
    for fact, ok in facts.items():
        print(f"{'HOLDS' if ok else 'FAILS'}  {fact}")
    return 0 if all(facts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
