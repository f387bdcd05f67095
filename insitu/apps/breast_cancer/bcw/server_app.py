"""The breast-cancer ServerApp: a standard Flower ``@app.main()`` over any ``Grid``.

Run config (``[tool.flwr.app.config]`` defaults, overridable per job):
``num-server-rounds``, ``strategy`` (fedavg | fedprox | fedadam | trimmed-mean | median),
``fraction-train``, ``min-nodes``, ``round-timeout``, ``lr``, ``local-epochs``,
``proximal-mu`` (fedprox), ``server-lr`` (fedadam), ``trim-beta`` (trimmed-mean),
``server-dp`` (none | server-fixed | client-fixed: Flower's DP wrappers) with
``server-dp-noise`` and ``server-dp-clip``, and ``seed``.

How the coordinator gets the outcome: either call :func:`run_server` (it returns
Flower's ``Result``: ``result.arrays`` is the final global model,
``result.train_metrics_clientapp`` / ``result.evaluate_metrics_clientapp`` the per-round
aggregated metrics), or run the standard ``app`` and read
``context.state["final-arrays"]`` afterwards. ``insitu.flower.observe_strategies`` does
the same for any app, without its cooperation.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, UserConfig
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Result,
    Strategy,
)

from .task import new_arrays

__all__ = ["STRATEGIES", "app", "make_strategy", "run_server"]

STRATEGIES = ("fedavg", "fedprox", "fedadam", "trimmed-mean", "median")
FINAL_ARRAYS_KEY = "final-arrays"

app = ServerApp()


def make_strategy(config: UserConfig) -> Strategy:
    """The job's strategy, built from its run config."""
    name = str(config.get("strategy", "fedavg"))
    min_nodes = int(config.get("min-nodes", 2))
    common = {
        "fraction_train": float(config.get("fraction-train", 1.0)),
        "fraction_evaluate": float(config.get("fraction-evaluate", 1.0)),
        "min_train_nodes": min_nodes,
        "min_evaluate_nodes": min_nodes,
        "min_available_nodes": min_nodes,
    }
    strategy: Strategy
    if name == "fedavg":
        strategy = FedAvg(**common)  # type: ignore[arg-type]
    elif name == "fedprox":
        strategy = FedProx(**common, proximal_mu=float(config.get("proximal-mu", 0.1)))  # type: ignore[arg-type]
    elif name == "fedadam":
        strategy = FedAdam(**common, eta=float(config.get("server-lr", 0.05)))  # type: ignore[arg-type]
    elif name == "trimmed-mean":
        strategy = FedTrimmedAvg(**common, beta=float(config.get("trim-beta", 0.2)))  # type: ignore[arg-type]
    elif name == "median":
        strategy = FedMedian(**common)  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    server_dp = str(config.get("server-dp", "none"))
    if server_dp == "none":
        return strategy
    wrappers = {
        "server-fixed": DifferentialPrivacyServerSideFixedClipping,
        "client-fixed": DifferentialPrivacyClientSideFixedClipping,
    }
    if server_dp not in wrappers:
        raise ValueError(
            f"unknown server-dp {server_dp!r}; choose none, server-fixed or client-fixed"
        )
    return wrappers[server_dp](
        strategy,
        noise_multiplier=float(config.get("server-dp-noise", 0.1)),
        clipping_norm=float(config.get("server-dp-clip", 10.0)),
        num_sampled_clients=min_nodes,
    )


def run_server(grid: Grid, context: Context) -> Result:
    """Run the whole federated training; returns Flower's ``Result``.

    Raises ``RuntimeError`` when no round aggregated any update: a run in which every
    site failed must not "succeed" with the initial model.
    """
    config = context.run_config
    strategy = make_strategy(config)
    result = strategy.start(
        grid=grid,
        initial_arrays=new_arrays(int(config.get("seed", 0))),
        num_rounds=int(config.get("num-server-rounds", 5)),
        timeout=float(config.get("round-timeout", 3600.0)),
        train_config=ConfigRecord({
            "lr": float(config.get("lr", 0.01)),
            "local-epochs": int(config.get("local-epochs", 5)),
        }),
        evaluate_config=ConfigRecord(),
    )
    if not result.train_metrics_clientapp:
        raise RuntimeError("no site returned a usable model update in any round")
    return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: trains, then keeps the final arrays in ``context.state``."""
    result = run_server(grid, context)
    context.state[FINAL_ARRAYS_KEY] = result.arrays
