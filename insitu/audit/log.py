"""The audit log: group-committed durable appends, an in-memory Merkle tree, checkpoints.

Appenders hand records to one writer thread. It takes everything queued (up to
``max_batch``), assigns consecutive ``seq`` and ``time``, writes the batch in one store
transaction, and only after the commit returns does it extend the tree and wake the
appenders with their seq. So ``append`` returns only for durable entries, seqs are
gap-free, and concurrent appenders share one fsync. Any store failure fails the whole
batch with :class:`AuditUnavailableError`; callers fail closed.

Signed checkpoints are taken every ``checkpoint_every_n`` entries, every
``checkpoint_every_s`` seconds (when the tree grew), on :meth:`AuditLog.checkpoint`, and on
close. On open, the log reloads every leaf hash and refuses to start when the store no
longer matches its own latest signed checkpoint (lost or rewritten entries).

Example::

    log = AuditLog(store, origin="insitu/coordinator", signer=signer.sign,
                   key_name="insitu/coordinator", public_key=signer.public_key)
    seq = log.append(record)
    signed = log.checkpoint()
    proof = log.inclusion_proof(seq, signed.size)
    log.close()
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime

import rfc8785

from insitu.audit.checkpoint import Checkpoint, Signer, sign_checkpoint, verify_checkpoint
from insitu.audit.errors import (
    AuditError,
    AuditUnavailableError,
    RecordInvalidError,
    SequenceConflictError,
)
from insitu.audit.merkle import hash_leaf, verify_match
from insitu.audit.record import (
    Actor,
    AuditRecord,
    EventType,
    Origin,
    Outcome,
    Resource,
    format_time,
    validate_record,
)
from insitu.audit.store import AuditStore, StoredEntry
from insitu.audit.tree import MerkleTree

__all__ = ["AuditLog", "SignedCheckpoint"]

_log = logging.getLogger(__name__)
_CONFLICT_RETRIES = 5


@dataclasses.dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint together with its signed-note text (what witnesses and auditors get)."""

    checkpoint: Checkpoint
    note: str

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


class AuditLog:
    """A thread-safe, append-only, verifiable audit log over an :class:`AuditStore`."""

    def __init__(
        self,
        store: AuditStore,
        *,
        origin: str,
        signer: Signer,
        key_name: str,
        public_key: bytes,
        checkpoint_every_n: int = 1000,
        checkpoint_every_s: float = 60.0,
        max_batch: int = 1024,
        node: str | None = None,
        clock_source: str = "system-utc",
        now: Callable[[], datetime] | None = None,
        lifecycle_events: bool = True,
        previous_public_keys: Sequence[bytes] = (),
    ) -> None:
        self._store = store
        self._origin = origin
        self._signer = signer
        self._key_name = key_name
        self._public_key = public_key
        self._every_n = max(1, checkpoint_every_n)
        self._every_s = checkpoint_every_s
        self._max_batch = max(1, max_batch)
        self._node = node or origin
        self._clock_source = clock_source
        self._now = now or (lambda: datetime.now(UTC))
        self._lifecycle = lifecycle_events
        # After a transit key rotation the stored checkpoints were signed by an older version.
        self._verify_keys = [public_key, *previous_public_keys]

        self._tree = MerkleTree()
        self._tree_lock = threading.Lock()
        self._cp_lock = threading.Lock()
        self._latest: SignedCheckpoint | None = None
        self._open_and_check()

        self._cond = threading.Condition()
        self._queue: deque[tuple[AuditRecord, Future[int]]] = deque()
        self._closing = False
        self._closed = False
        self._cp_wake = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()
        self._timer = threading.Thread(
            target=self._checkpoint_loop, name="audit-checkpointer", daemon=True
        )
        self._timer.start()
        if self._lifecycle:
            try:
                self.append(self._lifecycle_record(EventType.AUDIT_START, "audit.start"))
            except BaseException:
                # A log that cannot record its own start is not open: stop the threads.
                self._lifecycle = False
                self.close(close_store=False)
                raise

    # --- opening -----------------------------------------------------------------------

    def _open_and_check(self) -> None:
        """Load the tree and check the store still matches its latest signed checkpoint."""
        try:
            self._tree.extend(self._store.leaf_hashes())
            stored = self._store.latest_checkpoint()
        except AuditError:
            raise
        except Exception as e:  # a store bug must not escape as a random type
            raise AuditUnavailableError(f"cannot load audit store: {type(e).__name__}") from None
        if stored is None:
            return
        cp = self._verify_stored(stored.note)
        if cp.size > self._tree.size:
            raise AuditError(
                f"store holds {self._tree.size} entries but its signed checkpoint commits to "
                f"{cp.size}: entries were lost or removed"
            )
        verify_match(self._tree.root(cp.size), cp.root, f"root at checkpoint size {cp.size}")
        self._latest = SignedCheckpoint(cp, stored.note)

    def _verify_stored(self, note: str) -> Checkpoint:
        failure: AuditError | None = None
        for key in self._verify_keys:
            try:
                return verify_checkpoint(note, self._key_name, key, origin=self._origin)
            except AuditError as e:
                failure = failure or e
        assert failure is not None
        raise failure

    def _lifecycle_record(self, event: EventType, action: str) -> AuditRecord:
        return AuditRecord(
            event_type=event,
            actor=Actor.system(),
            action=action,
            resource=Resource("audit_log", self._origin),
            outcome=Outcome.SUCCESS,
            origin=Origin(node=self._node),
            clock=self._clock_source,
        )

    # --- appending ---------------------------------------------------------------------

    def append(self, record: AuditRecord, *, timeout_s: float | None = 30.0) -> int:
        """Append ``record`` durably and return its seq.

        Raises RecordInvalidError for a record that violates the schema (a caller bug)
        and AuditUnavailableError when the entry could not be made durable in time. On a
        timeout the entry may still commit later; the caller must treat it as failed.
        """
        if record.seq is not None:
            raise RecordInvalidError("seq is assigned by the log; leave it unset")
        if record.time is None:
            # The log stamps the time, so the log's clock is the record's clock source.
            record = dataclasses.replace(record, clock=self._clock_source)
        # Validate now, in the caller's thread, with placeholder position; the writer
        # only substitutes seq and time, which are valid by construction.
        validate_record(record.positioned(0, record.time or format_time(self._now())).to_dict())
        fut: Future[int] = Future()
        with self._cond:
            if self._closing:
                raise AuditUnavailableError("audit log is closed")
            self._queue.append((record, fut))
            self._cond.notify()
        try:
            return fut.result(timeout=timeout_s)
        except FutureTimeout:
            raise AuditUnavailableError("audit append was not acknowledged in time") from None

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            try:
                self._commit(batch)
            except BaseException as e:  # the writer must survive anything
                err = (
                    e
                    if isinstance(e, AuditUnavailableError)
                    else AuditUnavailableError(f"audit append failed: {type(e).__name__}")
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)

    def _commit(self, batch: list[tuple[AuditRecord, Future[int]]]) -> None:
        for _attempt in range(_CONFLICT_RETRIES):
            with self._tree_lock:
                base = self._tree.size
            stamp = format_time(self._now())
            entries: list[StoredEntry] = []
            for i, (rec, _) in enumerate(batch):
                data = rfc8785.dumps(rec.positioned(base + i, stamp).to_dict())
                entries.append(StoredEntry(base + i, hash_leaf(data), data))
            try:
                self._store.append_batch(entries)
            except SequenceConflictError:
                self._resync()  # another writer (HA replica, the prune CLI) appended
                continue
            except AuditUnavailableError:
                self._try_resync()
                raise
            except AuditError as exc:
                raise AuditUnavailableError(
                    f"audit store refused the batch: {exc.detail}"
                ) from None
            with self._tree_lock:
                self._tree.extend(entry.leaf_hash for entry in entries)
                grown = self._tree.size - (self._latest.size if self._latest else 0)
            for (_, fut), entry in zip(batch, entries, strict=True):
                fut.set_result(entry.seq)
            if grown >= self._every_n:
                self._cp_wake.set()
            return
        raise AuditUnavailableError("audit store kept changing under the writer")

    def _resync(self) -> None:
        with self._tree_lock:
            self._tree.extend(self._store.leaf_hashes(self._tree.size))

    def _try_resync(self) -> None:
        # A failed commit may have committed after all (lost ack): pick up what is there.
        try:
            self._resync()
        except Exception:
            _log.debug("audit resync after a failed append also failed", exc_info=True)

    # --- checkpoints -------------------------------------------------------------------

    def _checkpoint_loop(self) -> None:
        timeout = self._every_s if self._every_s > 0 else None
        while True:
            self._cp_wake.wait(timeout)
            self._cp_wake.clear()
            if self._closing:
                return
            try:
                self.checkpoint()
            except Exception as e:
                # Appends stay durable without a checkpoint; keep trying on the next tick.
                _log.warning("audit checkpoint failed: %s", type(e).__name__)

    def checkpoint(self) -> SignedCheckpoint:
        """Sign and store a checkpoint of the current tree (no-op if nothing changed)."""
        with self._cp_lock:
            with self._tree_lock:
                size = self._tree.size
                root = self._tree.root()
            latest = self._latest
            if latest is not None and latest.size == size:
                return latest
            cp = Checkpoint(self._origin, size, root)
            note = sign_checkpoint(cp, self._key_name, self._signer, self._public_key)
            self._store.add_checkpoint(size, note)
            self._latest = SignedCheckpoint(cp, note)
            return self._latest

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._latest

    # --- reading -----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def store(self) -> AuditStore:
        return self._store

    @property
    def node(self) -> str:
        return self._node

    @property
    def key_name(self) -> str:
        return self._key_name

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def size(self) -> int:
        with self._tree_lock:
            return self._tree.size

    def root(self, size: int | None = None) -> bytes:
        with self._tree_lock:
            return self._tree.root(size)

    def leaf_hash(self, index: int) -> bytes:
        with self._tree_lock:
            return self._tree.leaf_hash(index)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._tree_lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        with self._tree_lock:
            return self._tree.consistency_proof(m, n)

    def compact_range(self, size: int) -> list[bytes]:
        with self._tree_lock:
            return self._tree.compact_range(size)

    # --- closing -----------------------------------------------------------------------

    def close(self, *, close_store: bool = True) -> None:
        """Drain pending appends, log the stop, take a final checkpoint, stop threads."""
        if self._closed:
            return
        if self._lifecycle:
            try:
                self.append(self._lifecycle_record(EventType.AUDIT_STOP, "audit.stop"))
            except AuditError:
                _log.warning("could not log audit.stop")
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join()
        self._cp_wake.set()
        self._timer.join()
        try:
            self.checkpoint()
        except Exception as e:
            _log.warning("final audit checkpoint failed: %s", type(e).__name__)
        self._closed = True
        if close_store:
            self._store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
