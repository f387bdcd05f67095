"""kill -9 a process appending in a loop, 20 times: no acknowledged event is lost, and the
log verifies after every restart."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from insitu.audit.log import AuditLog
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore
from insitu.audit.verify import verify_store

ORIGIN = "insitu/crash-test"
KILLS = 20

# Four threads append (so batches are group-committed) and print each acknowledged
# "seq event_id" only after append() returned, i.e. after the commit was durable.
CHILD = r"""
import sys, threading
from pathlib import Path
from insitu.audit.log import AuditLog
from insitu.audit.record import Actor, AuditRecord, Origin, Resource
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore

db, seed, origin = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
signer = LocalSigner.from_file(seed)
log = AuditLog(SqliteAuditStore(db), origin=origin, signer=signer.sign, key_name=origin,
               public_key=signer.public_key, checkpoint_every_n=64, checkpoint_every_s=0.05)
out = threading.Lock()
print("ready", flush=True)

def work(w):
    i = 0
    while True:
        rec = AuditRecord(event_type="rpc.request", actor=Actor(f"spiffe://t/site/s{w}", "mtls"),
                          action="/x/Append", resource=Resource("n", str(i)), outcome="success",
                          origin=Origin("crash-child"))
        seq = log.append(rec)
        with out:
            sys.stdout.write(f"{seq} {rec.event_id}\n")
            sys.stdout.flush()
        i += 1

for w in range(4):
    threading.Thread(target=work, args=(w,), daemon=True).start()
threading.Event().wait()
"""


def _run_and_kill(db: Path, seed: Path, rng: random.Random) -> dict[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(seed), ORIGIN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: dict[int, str] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line == "ready\n":
                ready.set()
                continue
            parts = line.split()
            if len(parts) == 2 and line.endswith("\n"):  # a torn last line was never acked
                acked[int(parts[0])] = parts[1]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(60), proc.stderr.read() if proc.stderr else "child did not start"
    time.sleep(rng.uniform(0.02, 0.35))  # a random moment: mid-batch, mid-checkpoint, ...
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    reader.join(30)
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    db, seed = tmp_path / "audit.db", tmp_path / "seed"
    signer = LocalSigner.generate()
    signer.save(seed)
    rng = random.Random(20261121)
    all_acked: dict[int, str] = {}
    for round_ in range(KILLS):
        acked = _run_and_kill(db, seed, rng)
        assert not (acked.keys() & all_acked.keys()), "a seq was handed out twice"
        all_acked.update(acked)

        # Restart: opening re-checks the store against its own latest signed checkpoint.
        log = AuditLog(
            SqliteAuditStore(db),
            origin=ORIGIN,
            signer=signer.sign,
            key_name=ORIGIN,
            public_key=signer.public_key,
            checkpoint_every_s=0,
        )
        store = log.store
        ids = {e.seq: json.loads(e.data or b"{}").get("event_id") for e in store.entries()}
        missing = [s for s, eid in all_acked.items() if ids.get(s) != eid]
        assert not missing, f"round {round_}: acknowledged seqs lost: {missing[:5]}"
        log.close(close_store=False)  # logs audit.stop and checkpoints everything
        latest = store.latest_checkpoint()
        assert latest is not None
        assert verify_store(store, latest.note, signer.public_key).size == store.size()
        store.close()
    assert len(all_acked) > KILLS  # the loop really appended under fire
