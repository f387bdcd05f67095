"""PolicyEngine.authorize() throughput on the shipped policies, single thread.

Three measurements in one run, reported as decisions/s and as ratios:
  * repeat   - the same caller and model every call (an RPC stream): the entity slice
               comes from the engine's cache;
  * distinct - a new model id every call, so every slice is parsed;
  * reparse  - baseline: plain cedarpy given the policy and schema TEXT every call, which
               is what "no parse-once" would cost.

Run: .venv/bin/python bench/bench_authz_engine.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cedarpy

from insitu.authz import AuthzRequest, EntityRef, PolicyEngine, Resource, RoleBinding
from insitu.authz.model import build_cedar_input

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies" / "rbac"
DANA = "spiffe://demo.insitu/user/dana"
NOW = 1_800_000_000


def predict(model_id: str) -> AuthzRequest:
    model = Resource(
        "Model",
        model_id,
        {
            "owner": EntityRef("User", "bob"),
            "org": EntityRef("Org", "acme"),
            "grantees": [EntityRef("User", "dana")],
            "service_grantees": [],
        },
    )
    return AuthzRequest(
        DANA, [RoleBinding(DANA, "inference_client")], "predict", model, {"now": NOW}
    )


def rate(fn: Callable[[int], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            fn(n)
            n += 1
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    engine = PolicyEngine(POLICY_DIR)
    same = predict("cardio-risk")
    assert engine.authorize(same).allowed

    text = "\n".join(p.read_text() for p in sorted(POLICY_DIR.glob("*.cedar")))
    schema_text = (POLICY_DIR / "schema.cedarschema").read_text()
    cin = build_cedar_input(same)

    def reparse(_: int) -> object:
        return cedarpy.is_authorized(cin.request, text, cin.entities, schema_text)

    base = rate(reparse, args.seconds)
    repeat = rate(lambda _: engine.authorize(same), args.seconds)
    distinct = rate(lambda i: engine.authorize(predict(f"m{i}")), args.seconds)
    print(f"policies: {len(engine.policy_ids)}  hash {engine.policy_hash[:16]}")
    print(f"reparse  (baseline) {base:10.0f} decisions/s")
    print(f"repeat              {repeat:10.0f} decisions/s  {repeat / base:6.1f}x baseline")
    print(f"distinct            {distinct:10.0f} decisions/s  {distinct / base:6.1f}x baseline")


if __name__ == "__main__":
    main()
