"""Each attempt prints ``ATTEMPT <name>: blocked|LEAKED`` to stderr (the job's log)."""

import os
import socket
import sys
import time

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _say(name: str, leaked: bool, how: str) -> None:
    print(f"ATTEMPT {name}: {'LEAKED' if leaked else 'blocked'} ({how})", file=sys.stderr,
          flush=True)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _try(name: str, fn) -> None:  # type: ignore[no-untyped-def]
    try:
        got = fn()
        _say(name, True, str(got)[:40])
    except Exception as e:
        _say(name, False, type(e).__name__)


@app.main()
def main(grid: Grid, context: Context) -> None:
    if context.run_config.get("mode") == "hang":
        print("hanging on purpose", file=sys.stderr, flush=True)
        while True:
            time.sleep(1)
    cdir = str(context.run_config["coordinator-dir"])
    for rel in ("tls/key.pem", "audit.db", "store.db", "approle/secret_id", "models"):
        _try(f"read {rel}", lambda rel=rel: os.listdir(os.path.join(cdir, rel))
             if rel == "models" else _read(os.path.join(cdir, rel)))
    _try("list coordinator dir", lambda: os.listdir(cdir))
    secrets = sorted(k for k in os.environ if "TOKEN" in k or "VAULT" in k or "BAO" in k
                     or "SECRET" in k)
    _say("environment secrets", bool(secrets), ",".join(secrets) or "none")
    host, _, port = str(context.run_config["vault-addr"]).rpartition(":")
    _try("connect OpenBao", lambda: socket.create_connection((host, int(port)), timeout=2))
    nodes = list(grid.get_node_ids())
    _try("message a node outside the job", lambda: grid.push_messages(
        [Message(RecordDict(), dst_node_id=4242, message_type="train")]))
    other = Message(RecordDict(), dst_node_id=nodes[0] if nodes else 1, message_type="train")
    other.metadata.__dict__["_run_id"] = other.metadata.run_id + 1
    _try("message with another run id", lambda: grid.push_messages([other]))
    # No strategy runs: there is no model, and nothing is signed.
