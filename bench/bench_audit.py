"""Audit log benchmarks (never part of `make test`); each prints a ratio to a baseline
measured in the same run on the same machine.

1. Durable appends/s through AuditLog (validation, canonical JSON, hashing, group commit)
   vs raw SQLite inserts committed in batches of the same average size (WAL + FULL).
2. Offline verify rate (records/s) vs raw hashlib SHA-256 over the same export bytes.
3. Proof generation at 1M entries: the incremental tree vs recomputing from leaf hashes.

Usage: python bench/bench_audit.py [--appends 20000] [--threads 16] [--verify 20000]
                                    [--leaves 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import rfc8785

from insitu.audit import merkle
from insitu.audit.export import export_lines
from insitu.audit.log import AuditLog
from insitu.audit.record import Actor, AuditRecord, AuthzInfo, Origin, Resource
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore
from insitu.audit.store import StoredEntry
from insitu.audit.tree import MerkleTree
from insitu.audit.verify import verify_export

ORIGIN = "insitu/bench"


class CountingStore(SqliteAuditStore):
    """Counts commits, to learn the average group-commit batch size."""

    commits = 0

    def append_batch(self, entries: Sequence[StoredEntry]) -> None:
        super().append_batch(entries)
        self.commits += 1


def record(i: int) -> AuditRecord:
    return AuditRecord(
        event_type="rpc.request",
        actor=Actor(f"spiffe://bench.insitu/site/s{i % 50}", "mtls", "ab" * 32, "site"),
        action="/insitu.v1.Coordinator/Heartbeat",
        resource=Resource("site", f"s{i % 50}"),
        outcome="success",
        origin=Origin("coordinator", "ipv4:10.0.0.1:5000"),
        correlation_id=f"c{i}",
        authz=AuthzInfo("allow", "sha256:" + "0" * 64, ("p1",)),
    )


def _audit_round(
    n: int, threads: int, db: Path, signer: LocalSigner
) -> tuple[float, int, list[bytes]]:
    store = CountingStore(db)
    log = AuditLog(
        store,
        origin=ORIGIN,
        signer=signer.sign,
        key_name=ORIGIN,
        public_key=signer.public_key,
        checkpoint_every_n=10_000,
        checkpoint_every_s=0,
        lifecycle_events=False,
    )
    per = n // threads

    def worker(w: int) -> None:
        for i in range(per):
            log.append(record(w * per + i))

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    total = per * threads
    batch = max(1, round(total / max(store.commits, 1)))
    sample = [e.data or b"" for e in store.entries(0, 1000)]
    log.close()
    return total / elapsed, batch, sample


def _raw_round(n: int, batch: int, db: Path, sample: list[bytes]) -> float:
    """Same bytes, same batch size, same pragmas, one writer, no audit logic."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE r (seq INTEGER PRIMARY KEY, leaf_hash BLOB, data BLOB)")
    rows = [
        (i, hashlib.sha256(b"\x00" + sample[i % len(sample)]).digest(), sample[i % len(sample)])
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT INTO r VALUES (?, ?, ?)", rows[i : i + batch])
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return n / elapsed


def bench_appends(n: int, threads: int, work: Path, signer: LocalSigner, rounds: int = 3) -> None:
    # Alternate the two in rounds: fsync latency on a shared disk drifts over seconds.
    ratios, audits, raws, batches = [], [], [], []
    for r in range(rounds):
        a, batch, sample = _audit_round(n // rounds, threads, work / f"appends{r}.db", signer)
        raw = _raw_round(n // rounds, batch, work / f"raw{r}.db", sample)
        audits.append(a)
        raws.append(raw)
        batches.append(batch)
        ratios.append(a / raw)
    med = statistics.median
    print(f"[appends] {threads} threads, {n} durable appends in {rounds} alternating rounds")
    print(f"  AuditLog        {med(audits):10.0f} appends/s (median, avg batch {med(batches):.0f})")
    print(f"  raw SQLite      {med(raws):10.0f} rows/s (same batch size, WAL+FULL, median)")
    print(f"  ratio           {med(ratios):10.3f} (AuditLog / raw group commit, median of rounds)")


def bench_verify(n: int, work: Path, signer: LocalSigner) -> None:
    store = SqliteAuditStore(work / "verify.db")
    log = AuditLog(
        store,
        origin=ORIGIN,
        signer=signer.sign,
        key_name=ORIGIN,
        public_key=signer.public_key,
        checkpoint_every_n=1000,
        checkpoint_every_s=0,
        lifecycle_events=False,
        max_batch=4096,
    )
    done = threading.Semaphore(0)

    def worker(w: int) -> None:
        for i in range(n // 8):
            log.append(record(w * n + i))
        done.release()

    for w in range(8):
        threading.Thread(target=worker, args=(w,)).start()
    for _ in range(8):
        done.acquire()
    note = log.checkpoint().note
    lines = list(export_lines(store))
    notes = [c.note for c in store.checkpoints()]
    log.close()
    blob = [line.encode() for line in lines]
    t0 = time.perf_counter()
    res = verify_export(lines, note, signer.public_key, checkpoint_notes=notes)
    v_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in blob:
        hashlib.sha256(b).digest()
    h_s = time.perf_counter() - t0
    mb = sum(map(len, blob)) / 1e6
    print(f"[verify] {res.size} entries ({mb:.1f} MB), {res.checkpoints_checked} checkpoints")
    print(f"  verify_export   {res.size / v_s:10.0f} entries/s")
    print(f"  raw SHA-256     {len(blob) / h_s:10.0f} lines/s over the same bytes")
    print(f"  ratio           {(res.size / v_s) / (len(blob) / h_s):10.4f} (verify / raw hashing)")


def bench_proofs(n: int) -> None:
    rng = random.Random(1)
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    t0 = time.perf_counter()
    tree = MerkleTree(leaves)
    build_s = time.perf_counter() - t0
    root = tree.root()
    k = 2000
    idx = [rng.randrange(n) for _ in range(k)]
    t0 = time.perf_counter()
    proofs = [tree.inclusion_proof(i, n) for i in idx]
    incl_s = (time.perf_counter() - t0) / k
    for i, p in zip(idx[:50], proofs[:50], strict=True):
        merkle.verify_inclusion(leaves[i], i, n, p, root)
    olds = [rng.randrange(1, n) for _ in range(k)]
    t0 = time.perf_counter()
    for m in olds:
        tree.consistency_proof(m, n)
    cons_s = (time.perf_counter() - t0) / k
    # Baseline: the stateless builder recomputes every subtree from the leaf hashes.
    reps = 3
    t0 = time.perf_counter()
    for i in idx[:reps]:
        assert merkle.inclusion_proof(leaves, i, n) == tree.inclusion_proof(i, n)
    naive_s = (time.perf_counter() - t0) / reps
    print(f"[proofs] {n} leaves; incremental tree built in {build_s:.2f} s")
    print(f"  inclusion proof   {incl_s * 1e6:10.1f} us   consistency proof {cons_s * 1e6:8.1f} us")
    print(f"  from leaf hashes  {naive_s * 1e6:10.1f} us (stateless recompute)")
    print(f"  ratio           {naive_s / incl_s:10.0f}x faster (incremental / recompute)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appends", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--verify", type=int, default=20_000)
    ap.add_argument("--leaves", type=int, default=1_000_000)
    args = ap.parse_args()
    signer = LocalSigner.generate()
    with tempfile.TemporaryDirectory() as d:
        bench_appends(args.appends, args.threads, Path(d), signer)
        bench_verify(args.verify, Path(d), signer)
    bench_proofs(args.leaves)
    _ = rfc8785  # the canonicalizer is part of what is measured (through AuditRecord)


if __name__ == "__main__":
    main()
