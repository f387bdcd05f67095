"""The egress guard: the one choke point every outbound message of the site daemon
passes. It admits only session control, answers to instructions this site actually
received, attested feature batches, and checkpoints; anything else is refused and
audited with the route and the rule, never the payload.

A reply to a job's instruction must meet the **egress contract** (:meth:`EgressGuard.check_reply`):

- an Error reply leaves with its code only (the site substitutes the catalog text for
  the reason; a code outside the catalog becomes "ClientApp raised an exception");
- metric and config entries are finite numbers or bools, under keys the app declared in
  its ``[tool.insitu]`` table and in records whose names it declared; the count of
  entries, each list's length and the records' total bytes are bounded
  (:class:`EgressBounds`, per site); for a job under site DP, metrics are scalars and at
  most ``dp_max_entries`` (they are outside the DP guarantee);
- a record or entry of no known kind is refused;
- arrays answer the instruction exactly: the same records, names, shapes, dtypes and
  serialization, none missing and none extra; arrays in a reply to an instruction without
  arrays are refused.

What the contract cannot stop: numbers in declared metrics and in the arrays still carry
information about the data. That is bounded by the entry limits above and, for the arrays,
by the site's DP (``site_node.training.dp``) where a dataset declares it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flwr.common.constant import ErrorCode as FlowerErrorCode

from insitu._proto.v1 import session_pb2
from insitu.attestation import SignedAttestation, verify_attestation
from insitu.errors import ErrorCode, InsituError
from insitu.flower.declaration import AppDeclaration
from insitu.flower.refusals import REFUSAL_TEXT, SiteRefusal, refusal_text
from site_node.training.reply import ArraySpec, ParsedReply

__all__ = ["EgressBounds", "EgressGuard", "EgressRefused"]

CONTROL = frozenset({"hello", "heartbeat", "job_decision", "deploy_result", "witness"})


@dataclass(frozen=True)
class EgressBounds:
    """Per-site bounds on what one reply's metric and config records may hold."""

    max_entries: int = 64  # entries over all metric and config records of one reply
    max_list_length: int = 64  # elements of one list-valued entry
    max_record_bytes: int = 16 * 1024  # serialized metric + config records of one reply
    max_reply_bytes: int = 512 * 1024 * 1024
    # On a dataset with site DP the metrics are outside the DP guarantee: fewer, scalars only.
    dp_max_entries: int = 8

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_list_length", "max_record_bytes", "max_reply_bytes",
                     "dp_max_entries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InsituError(ErrorCode.CONFIG, f"egress bound {name} must be an integer > 0")


class EgressRefused(InsituError):
    """A refusal, with the catalog code that the error reply carries in its place."""

    code = ErrorCode.PERMISSION_DENIED

    def __init__(self, detail: str, refusal: SiteRefusal = SiteRefusal.REPLY_MALFORMED) -> None:
        super().__init__(detail=detail)
        self.refusal = refusal


class EgressGuard:
    """Thread-safe; ``on_refused(route, rule)`` is the audit hook (never given a payload)."""

    def __init__(
        self,
        on_refused: Callable[[str, str], None],
        *,
        bounds: EgressBounds | None = None,
        max_reply_bytes: int | None = None,
    ) -> None:
        self._on_refused = on_refused
        self.bounds = bounds or EgressBounds()
        self.max_reply_bytes = max_reply_bytes or self.bounds.max_reply_bytes
        self._lock = threading.Lock()
        # (job id, message id) -> the instruction's array layout, for replies we owe.
        self._owed: dict[tuple[str, str], Mapping[str, Mapping[str, ArraySpec]]] = {}
        self._declared: dict[str, AppDeclaration] = {}
        self._dp_jobs: set[str] = set()
        self._cleared: set[tuple[str, str]] = set()  # whole replies checked, chunks pending
        self._cleared_releases: set[str] = set()
        self.admitted = 0

    def register_job(self, job_id: str, declaration: AppDeclaration, *, dp: bool = False) -> None:
        """What the approved app of ``job_id`` declared (metric keys, record names), and
        whether the site applies DP to its updates (then metrics are scalars, and fewer)."""
        with self._lock:
            self._declared[job_id] = declaration
            if dp:
                self._dp_jobs.add(job_id)

    def expect_reply(
        self, job_id: str, message_id: str, arrays: Mapping[str, Mapping[str, ArraySpec]]
    ) -> None:
        """Record an instruction received (its array layout); exactly one reply may leave."""
        with self._lock:
            self._owed[(job_id, message_id)] = arrays

    def forget_job(self, job_id: str) -> None:
        with self._lock:
            for k in [k for k in self._owed if k[0] == job_id]:
                del self._owed[k]
            self._declared.pop(job_id, None)
            self._dp_jobs.discard(job_id)

    def _refuse(self, route: str, rule: str, refusal: SiteRefusal = SiteRefusal.REPLY_MALFORMED
                ) -> EgressRefused:
        self._on_refused(route, rule)
        return EgressRefused(f"egress refused ({route}): {rule}", refusal)

    def check_reply(self, job_id: str, message_id: str, reply: ParsedReply) -> None:
        """Check a whole reply against the contract, or raise :class:`EgressRefused` naming
        the rule. The owed slot stays open: :meth:`release` lets the checked reply out, or
        :meth:`clear_error` the code-only error reply sent in its place."""
        with self._lock:
            shapes = self._owed.get((job_id, message_id))
            declared = self._declared.get(job_id)
            dp = job_id in self._dp_jobs
        if shapes is None or declared is None:
            raise self._refuse("task_reply", "no instruction is awaiting this reply")
        if reply.size > self.max_reply_bytes:
            raise self._refuse("task_reply", f"reply of {reply.size} bytes exceeds the bound",
                               SiteRefusal.REPLY_TOO_LARGE)
        if reply.duplicate_keys:
            raise self._refuse("task_reply", "duplicate record or entry keys")
        if reply.unknown_records:
            raise self._refuse("task_reply", "a record or entry of no known kind")
        if reply.error_code is not None:
            raise self._refuse("task_reply", "an error reply leaves as a code only",
                               SiteRefusal.ERROR_REASON_REPLACED)
        self._check_records(reply, declared, dp)
        self._check_arrays(reply, shapes)

    def release(self, job_id: str, message_id: str) -> None:
        """Let the checked (and, where DP applies, privatized) reply to an owed instruction
        leave: its chunks pass :meth:`admit` until the last one."""
        with self._lock:
            if (job_id, message_id) not in self._owed:
                raise self._refuse("task_reply", "no instruction is awaiting this reply")
        self._clear_owed(job_id, message_id)

    def _check_records(self, reply: ParsedReply, declared: AppDeclaration, dp: bool) -> None:
        route, bounds = "task_reply", self.bounds
        max_entries = bounds.dp_max_entries if dp else bounds.max_entries
        entries = 0
        for kind, records in (("metric", reply.metrics), ("config", reply.configs)):
            for name, record in records.items():
                if name not in declared.metric_records:
                    raise self._refuse(route, f"{kind} record name not declared",
                                       SiteRefusal.METRIC_RECORD_UNDECLARED)
                for key, value in record.items():
                    if key not in declared.metric_keys:
                        raise self._refuse(route, f"{kind} key not declared",
                                           SiteRefusal.METRIC_KEY_UNDECLARED)
                    values = value if isinstance(value, list) else [value]
                    if any(isinstance(v, str | bytes) or v is None for v in values):
                        raise self._refuse(route, f"{kind} value is text or bytes",
                                           SiteRefusal.METRIC_VALUE_NOT_NUMERIC)
                    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                        # A NaN carries 51 payload bits of the app's choosing.
                        raise self._refuse(route, f"{kind} value is not finite",
                                           SiteRefusal.METRIC_VALUE_NOT_NUMERIC)
                    if dp and isinstance(value, list):
                        raise self._refuse(route, f"{kind} list under site DP",
                                           SiteRefusal.METRICS_TOO_LARGE)
                    if len(values) > bounds.max_list_length:
                        raise self._refuse(
                            route, f"{kind} list longer than {bounds.max_list_length}",
                            SiteRefusal.METRICS_TOO_LARGE,
                        )
                entries += len(record)
        if entries > max_entries:
            raise self._refuse(route, f"more than {max_entries} metric/config entries",
                               SiteRefusal.METRICS_TOO_LARGE)
        if reply.record_bytes > bounds.max_record_bytes:
            raise self._refuse(route, f"metric/config records over {bounds.max_record_bytes} "
                               "bytes", SiteRefusal.METRICS_TOO_LARGE)

    def _check_arrays(
        self, reply: ParsedReply, shapes: Mapping[str, Mapping[str, ArraySpec]]
    ) -> None:
        if reply.arrays and not shapes:
            raise self._refuse("task_reply", "arrays in a reply to an instruction without arrays",
                               SiteRefusal.ARRAYS_UNEXPECTED)
        if not reply.arrays:
            return  # an answer without arrays (evaluate, or a metrics-only train reply)
        if set(reply.arrays) != set(shapes) or any(
            dict(reply.arrays[k]) != dict(shapes[k]) for k in shapes
        ):
            raise self._refuse("task_reply", "arrays differ from the instruction's "
                               "(records, names, shapes or dtypes)", SiteRefusal.ARRAYS_MISMATCH)

    def clear_error(self, job_id: str, message_id: str, code: int) -> str:
        """Admit the code-only error reply to an owed instruction; returns the reason text
        it must carry (the catalog's). Codes outside the catalog become Flower's
        CLIENT_APP_RAISED_EXCEPTION."""
        with self._lock:
            if (job_id, message_id) not in self._owed:
                raise self._refuse("task_reply", "no instruction is awaiting this reply")
        self._clear_owed(job_id, message_id)
        return refusal_text(self.public_code(code))

    @staticmethod
    def public_code(code: int) -> int:
        """The code an error reply may carry: a catalog code, else CLIENT_APP_RAISED_EXCEPTION."""
        return code if code in REFUSAL_TEXT else FlowerErrorCode.CLIENT_APP_RAISED_EXCEPTION

    def _clear_owed(self, job_id: str, message_id: str) -> None:
        with self._lock:
            self._owed.pop((job_id, message_id), None)
            self._cleared.add((job_id, message_id))

    def check_feature_batch(
        self,
        release_id: str,
        signed: SignedAttestation,
        batch: bytes,
        site_key: bytes,
        current_policy_hash: str,
    ) -> None:
        """A feature batch leaves only with a valid attestation whose policy hash is the
        dataset's current policy (a stale or tampered attestation is refused)."""
        try:
            verify_attestation(
                signed, site_key, batch=batch, expected_policy_hash=current_policy_hash
            )
        except InsituError as e:
            raise self._refuse("feature_batch", e.detail) from None
        with self._lock:
            self._cleared_releases.add(release_id)

    def admit(self, msg: session_pb2.SiteMessage) -> session_pb2.SiteMessage:
        """Every outbound SiteMessage passes here; returns it or raises EgressRefused."""
        kind = msg.WhichOneof("body")
        if kind in CONTROL:
            self.admitted += 1
            return msg
        if kind == "task_reply":
            # Only chunks of a whole reply that check_reply cleared may leave.
            key = (msg.task_reply.job_id, msg.task_reply.message_id)
            with self._lock:
                if key not in self._cleared:
                    pass
                elif msg.task_reply.last:
                    self._cleared.discard(key)
                    self.admitted += 1
                    return msg
                else:
                    self.admitted += 1
                    return msg
            raise self._refuse("task_reply", "chunk of a reply that was not cleared")
        if kind == "feature_batch":
            rid = msg.feature_batch.release_id
            with self._lock:
                if rid in self._cleared_releases:
                    if msg.feature_batch.last:
                        self._cleared_releases.discard(rid)
                    self.admitted += 1
                    return msg
            raise self._refuse("feature_batch", "batch without a verified attestation")
        raise self._refuse(kind or "empty", "message kind is not allowed to leave the site")
