"""FedAvg over a small numpy model; sites with partition-id 0 misbehave, the rest behave."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def initial_arrays() -> ArrayRecord:
    return ArrayRecord({
        "w": Array(np.zeros((4, 3), np.float32)),
        "b": Array(np.zeros(3, np.float32)),
    })


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_train=1.0,
                      fraction_evaluate=float(context.run_config["fraction-evaluate"]),
                      min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=2)
    strategy.start(grid=grid, initial_arrays=initial_arrays(),
                   num_rounds=int(context.run_config["num-server-rounds"]))
