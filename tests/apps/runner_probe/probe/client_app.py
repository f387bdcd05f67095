"""Each handler replies with the message count kept in ``context.state`` and what it saw."""

import os
import time

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _count(context: Context) -> int:
    counter = context.state.config_records.get("probe", ConfigRecord({"count": 0}))
    count = int(counter["count"]) + 1
    context.state["probe"] = ConfigRecord({"count": count})
    return count


def _reply(msg: Message, context: Context) -> Message:
    info = ConfigRecord({
        "count": _count(context),
        "pid": os.getpid(),
        "greeting": str(context.run_config.get("greeting", "")),
        "dataset-path": str(context.node_config.get("dataset-path", "")),
        "partition-id": int(context.node_config["partition-id"]),
        "num-partitions": int(context.node_config["num-partitions"]),
        "device": str(context.node_config.get("device", "")),
        "secret-env": os.environ.get("INSITU_TEST_SECRET", "<absent>"),
    })
    return Message(RecordDict({"info": info, "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    print("a job printing to stdout must not corrupt the frame stream")
    return _reply(msg, context)


@app.query("crash")
def crash(msg: Message, context: Context) -> Message:
    _count(context)  # this increment is lost with the process
    os._exit(3)


@app.query("hang")
def hang(msg: Message, context: Context) -> Message:
    time.sleep(600)
    return _reply(msg, context)


@app.query("boom")
def boom(msg: Message, context: Context) -> Message:
    _count(context)  # rolled back: a failed message leaves the state as it was
    raise KeyError("patient-4711")


@app.query("forge")
def forge(msg: Message, context: Context) -> Message:
    reply = _reply(msg, context)
    reply.metadata.__dict__["_src_node_id"] = 999_999  # pretend to be another node
    return reply


@app.query("spin")
def spin(msg: Message, context: Context) -> Message:
    while True:  # burns CPU until the sandbox's CPU limit ends the worker
        pass
