"""The breast-cancer ClientApp: trains and evaluates the MLP on this site's local table.

It reads only ``node_config["dataset-path"]`` (a local file the site registered) and
replies with model arrays and metrics; no row ever goes into a Message. The device is
``node_config["device"]`` (``cuda`` where the site has a GPU).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from .task import (
    DPSettings,
    Features,
    Labels,
    Net,
    load_table,
    local_split,
    set_arrays,
)
from .task import evaluate as evaluate_model
from .task import train as train_model

app = ClientApp()

_CLIPPING_NORM_KEY = "clipping_norm"  # sent by Flower's client-side fixed-clipping wrapper


def _local_data(context: Context, part: str) -> tuple[Features, Labels]:
    features, labels = load_table(str(context.node_config["dataset-path"]))
    train_idx, test_idx = local_split(len(labels))
    rows = train_idx if part == "train" else test_idx
    return features[rows], labels[rows]


def _config(msg: Message) -> ConfigRecord:
    return msg.content.config_records.get("config", ConfigRecord())


def _train(msg: Message, context: Context) -> Message:
    run = context.run_config
    config = _config(msg)
    features, labels = _local_data(context, "train")
    net = set_arrays(Net(), msg.content["arrays"])  # type: ignore[arg-type]
    noise = float(run.get("dp-noise-multiplier", 0.0))
    dp = (
        DPSettings(
            noise_multiplier=noise,
            max_grad_norm=float(run.get("dp-max-grad-norm", 1.0)),
            delta=float(run.get("dp-delta", 1e-5)),
        )
        if noise > 0
        else None
    )
    server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
    outcome = train_model(
        net,
        features,
        labels,
        epochs=int(config.get("local-epochs", run.get("local-epochs", 5))),  # type: ignore[arg-type]
        lr=float(config.get("lr", run.get("lr", 0.01))),  # type: ignore[arg-type]
        batch_size=int(run.get("batch-size", 32)),
        device=str(context.node_config.get("device", "cpu")),
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
        dp=dp,
        seed=int(run.get("seed", 0)) * 1_000_003 + server_round * 101 + context.node_id % 97,
    )
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "train-loss": outcome.loss,
        "num-examples": outcome.num_examples,
    }
    if outcome.epsilon is not None:
        metrics["dp-epsilon"] = outcome.epsilon
    content = RecordDict(
        {"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training from the global arrays; replies arrays + train metrics."""
    if _CLIPPING_NORM_KEY in _config(msg):
        # The job chose Flower's client-side fixed clipping: clip the update here.
        return fixedclipping_mod(msg, context, _train)
    return _train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global arrays on this site's held-out rows."""
    features, labels = _local_data(context, "test")
    net = set_arrays(Net(), msg.content["arrays"])  # type: ignore[arg-type]
    loss, accuracy = evaluate_model(
        net, features, labels, device=str(context.node_config.get("device", "cpu"))
    )
    metrics = MetricRecord(
        {"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(labels)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
