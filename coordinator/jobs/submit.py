"""What a submission must be before the coordinator accepts it, and the run config its
ServerApp gets: the request's validated fields always win over ``run_config``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np

from insitu._proto.v1 import jobs_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.flower.bundle import MAX_BUNDLE_BYTES, code_hash
from insitu.flower.config import config_value
from insitu.identity.spiffe import validate_name

__all__ = ["STRATEGIES", "serverapp_run_config", "validate_submit"]

# The platform's strategies; any app's ServerApp may pick one through ``strategy``.
STRATEGIES: Final = ("fedavg", "fedprox", "fedadam", "trimmed-mean", "median")


def validate_submit(req: jobs_pb2.SubmitJobRequest, *, max_rounds: int) -> None:
    """INVALID_ARGUMENT naming the field for a submission the coordinator must refuse."""
    def bad(msg: str) -> InsituError:
        return InsituError(ErrorCode.INVALID_ARGUMENT, msg)

    if not req.app_bundle:
        raise bad("app_bundle is empty")
    if len(req.app_bundle) > MAX_BUNDLE_BYTES:
        raise bad(f"app_bundle exceeds {MAX_BUNDLE_BYTES} bytes")
    if code_hash(req.app_bundle) != req.code_sha256:
        raise bad("code_sha256 does not match app_bundle")
    if not req.targets:
        raise bad("targets must name at least one site")
    seen = set()
    for t in req.targets:
        validate_name(t.site_id, "targets.site_id")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", t.dataset):
            raise bad("targets.dataset must be a dataset name")
        if t.site_id in seen:
            raise bad(f"site {t.site_id} is targeted twice")
        seen.add(t.site_id)
    if not 1 <= req.rounds <= max_rounds:
        raise bad(f"rounds must be between 1 and {max_rounds}")
    if req.strategy not in STRATEGIES:
        raise bad(f"strategy must be one of {', '.join(STRATEGIES)}")
    if not 1 <= req.min_sites <= len(req.targets):
        raise bad("min_sites must be between 1 and the number of targets")
    if not 1 <= req.round_timeout_s <= 86_400:
        raise bad("round_timeout_s must be between 1 and 86400")
    dp = req.dp
    for name in ("noise_multiplier", "max_grad_norm", "epsilon", "delta"):
        v = getattr(dp, name)
        if not (v >= 0 and np.isfinite(v)):
            raise bad(f"dp.{name} must be a finite number >= 0")
    if dp.noise_multiplier > 0 and dp.epsilon <= 0:
        raise bad("a DP job must state the epsilon budget it may spend")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", req.model_name):
        raise bad("model_name must be lowercase letters, digits, '.', '_' or '-'")
    if len(req.run_config) > 64 or any(
        len(k) > 64 or len(v) > 256 for k, v in req.run_config.items()
    ):
        raise bad("run_config is too large")
    _check_validated_fields(req, bad)


def _check_validated_fields(
    req: jobs_pb2.SubmitJobRequest, bad: Callable[[str], InsituError]
) -> None:
    """``run_config`` may not undo what the request's validated fields say: more rounds,
    fewer sites, or a strategy outside the allow-list."""
    cfg = {k: config_value(v) for k, v in req.run_config.items()}
    rounds = cfg.get("num-server-rounds")
    if rounds is not None and (
        not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= req.rounds
    ):
        raise bad(f"run_config num-server-rounds must be an integer between 1 and rounds "
                  f"({req.rounds})")
    min_nodes = cfg.get("min-nodes")
    if min_nodes is not None and (
        not isinstance(min_nodes, int) or isinstance(min_nodes, bool)
        or not req.min_sites <= min_nodes <= len(req.targets)
    ):
        raise bad(f"run_config min-nodes must be an integer between min_sites "
                  f"({req.min_sites}) and the number of targets ({len(req.targets)})")
    strategy = cfg.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise bad(f"run_config strategy must be one of {', '.join(STRATEGIES)}")


def serverapp_run_config(
    app_config: Mapping[str, Any],
    run_config: Mapping[str, str],
    *,
    rounds: int,
    strategy: str,
    min_sites: int,
) -> dict[str, Any]:
    """The ServerApp's run config: the app's own defaults, then the platform's keys, then
    the submission's ``run_config``, then the validated fields clamped back in."""
    out: dict[str, Any] = dict(app_config)
    out.update({"num-server-rounds": rounds, "strategy": strategy, "min-nodes": min_sites,
                "fraction-train": 1.0, "fraction-evaluate": 1.0})
    out.update({k: config_value(v) for k, v in run_config.items()})
    out["num-server-rounds"] = min(int(out["num-server-rounds"]), rounds)
    out["min-nodes"] = max(int(out["min-nodes"]), min_sites)
    if out["strategy"] not in STRATEGIES:
        out["strategy"] = strategy
    return out
