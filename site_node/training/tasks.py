"""One instruction through a job's worker and out of the site, only through the egress
contract and, where the dataset asks for it, the site's own DP.

For each task :meth:`TaskReplies.handle`

1. runs the instruction (parsed once, its reply owed to the egress guard) in the job's
   worker (a bubblewrap sandbox unless the site set ``unsafe_unsandboxed_jobs``) and
   parses the reply once (:class:`ParsedReply`);
2. checks the reply against the egress contract (declared keys, bounds, exact arrays);
3. for a DP dataset, clips the update and adds Gaussian noise, and charges the ledger with
   the ε its own accountant computes (the job's ``dp-epsilon`` metric is only a claim,
   audited as such);
4. sends the reply, or in its place an error reply that carries a catalog code only.

A failure at any step is answered at once, so the coordinator's round proceeds without
waiting for its timeout.

Example::

    replies = TaskReplies(guard=guard, ledger=ledger, send=session.send, audit=audit,
                          node_id=node_id)
    replies.handle(job, message_id, ParsedInstruction.parse(proto))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Protocol

from flwr.proto.message_pb2 import Message as ProtoMessage

from insitu._proto.v1 import session_pb2
from insitu.errors import ErrorCode, InsituError
from insitu.flower.refusals import SiteRefusal, refusal_text
from insitu.rpc.chunks import split_message
from site_node.egress import EgressGuard, EgressRefused
from site_node.training.datasets import RegisteredDataset
from site_node.training.dp import DpAccountant, clip_and_noise
from site_node.training.ledger import PrivacyLedger
from site_node.training.reply import ParsedInstruction, ParsedReply, error_message
from site_node.training.runner import ClientAppRunner

__all__ = ["TaskJob", "TaskReplies"]

log = logging.getLogger(__name__)
Send = Callable[[session_pb2.SiteMessage], None]
Audit = Callable[[str, dict[str, str]], None]

# How a worker failure is reported to the coordinator (a code, never the detail).
_WORKER_REFUSALS: Final = {
    ErrorCode.DEADLINE_EXCEEDED: SiteRefusal.WORKER_TIMEOUT,
    ErrorCode.UNAVAILABLE: SiteRefusal.WORKER_CRASHED,
    ErrorCode.RESOURCE_EXHAUSTED: SiteRefusal.WORKER_LIMIT,
    ErrorCode.INTEGRITY: SiteRefusal.REPLY_MALFORMED,
    ErrorCode.INVALID_ARGUMENT: SiteRefusal.REPLY_MALFORMED,
}


class TaskJob(Protocol):
    """What answering a job's task needs of the job."""

    @property
    def job_id(self) -> str: ...

    @property
    def code_sha256(self) -> str: ...

    @property
    def dataset(self) -> RegisteredDataset: ...

    @property
    def dp(self) -> DpAccountant | None: ...  # the site's accountant, for a DP dataset

    @property
    def runner(self) -> ClientAppRunner: ...

    @property
    def ended(self) -> bool: ...  # stopped at the site: a failure then is not answered


class TaskReplies:
    """Answers the instructions of the site's jobs (thread-safe: one thread per job)."""

    def __init__(
        self, *, guard: EgressGuard, ledger: PrivacyLedger, send: Send, audit: Audit,
        node_id: int,
    ) -> None:
        self.guard = guard
        self.ledger = ledger
        self.send = send
        self.audit = audit
        self.node_id = node_id

    def handle(self, job: TaskJob, message_id: str, instruction: ParsedInstruction) -> None:
        """Run one instruction and send its reply, or an error reply in its place."""
        try:
            self._handle(job, message_id, instruction)
        except Exception:  # one bad reply must not end the job's loop
            log.exception("job %s: message %s failed", job.job_id, message_id)
            self._refused(job, "site", "site internal error")
            self.answer_error(job, message_id, instruction, SiteRefusal.SITE_INTERNAL)

    def _handle(self, job: TaskJob, message_id: str, instruction: ParsedInstruction) -> None:
        try:
            reply = job.runner.run(instruction.proto)
        except InsituError as e:
            if job.ended:  # its worker was stopped mid-message: nothing is owed any more
                return
            refusal = _WORKER_REFUSALS.get(e.code, SiteRefusal.SITE_INTERNAL)
            log.warning("job %s: worker failed: %s", job.job_id, e.detail)
            self._refused(job, "worker", refusal_text(refusal))
            self.answer_error(job, message_id, instruction, refusal)
            return
        if reply.error_code is not None:
            code = self.guard.public_code(reply.error_code)
            # The app's own reason never leaves (it can quote local data); its code does.
            self._refused(job, "error_reply", "reason replaced by the catalog text")
            self.answer_error(job, message_id, instruction, code)
            return
        try:
            self.guard.check_reply(job.job_id, message_id, reply)
            self._audit_claim(job, reply)
            if job.dp is not None and reply.arrays:
                self._privatize(job, instruction, reply)
            out = reply.encode(instruction, self.node_id)
        except EgressRefused as e:
            log.warning("job %s: reply refused: %s", job.job_id, e.detail)
            self.answer_error(job, message_id, instruction, e.refusal)
            return
        self.guard.release(job.job_id, message_id)
        self._send(job, message_id, out)

    def _privatize(self, job: TaskJob, instruction: ParsedInstruction, reply: ParsedReply) -> None:
        """Clip and noise the update, and charge the ledger before it may leave."""
        dp = job.dp
        assert dp is not None
        try:
            release = clip_and_noise(reply.array_values(), instruction.array_values(), dp.policy)
        except InsituError as e:
            self._refused(job, "dp", "update cannot be privatized")
            raise EgressRefused(e.detail, SiteRefusal.DP_NOT_APPLICABLE) from None
        epsilon = dp.charge_for_next()
        try:
            # Refused past the job's reservation: then this update never leaves.
            self.ledger.charge(job.dataset.name, job.job_id, epsilon)
        except InsituError as e:
            self._refused(job, "dp", "privacy budget exhausted")
            raise EgressRefused(e.detail, SiteRefusal.DP_BUDGET_EXCEEDED) from None
        dp.record_release()
        reply.replace_arrays(release.arrays)
        self.audit("job.dp_release", {
            "job_id": job.job_id,
            "code_sha256": job.code_sha256,
            "dataset": job.dataset.name,
            "releases": str(dp.releases),
            "epsilon_charged": repr(epsilon),
            "epsilon_total": repr(dp.epsilon),
            "clipped": str(release.clipped),
        })

    def _audit_claim(self, job: TaskJob, reply: ParsedReply) -> None:
        for record in reply.metrics.values():
            claim = record.get("dp-epsilon")
            if isinstance(claim, int | float) and not isinstance(claim, bool):
                # What the job says it spent: kept as a claim, never used for accounting.
                self.audit("job.dp_claim", {"job_id": job.job_id, "claimed_epsilon": repr(claim),
                                            "code_sha256": job.code_sha256})

    def _refused(self, job: TaskJob, route: str, rule: str) -> None:
        self.audit("job.reply_refused", {
            "job_id": job.job_id, "code_sha256": job.code_sha256, "route": route, "rule": rule,
        })

    def answer_error(
        self, job: TaskJob, message_id: str, instruction: ParsedInstruction, code: int
    ) -> None:
        """Answer the instruction at once with a code-only error reply."""
        try:
            reason = self.guard.clear_error(job.job_id, message_id, code)
        except InsituError as e:
            log.warning("job %s: no error reply sent: %s", job.job_id, e.detail)
            return
        out = error_message(instruction, self.node_id, self.guard.public_code(code), reason)
        self._send(job, message_id, out)

    def _send(self, job: TaskJob, message_id: str, out: ProtoMessage) -> None:
        content = out.content.SerializeToString() if out.HasField("content") else None
        error = out.error.SerializeToString() if out.HasField("error") else None
        meta = out.metadata.SerializeToString()
        try:
            for chunk in split_message(job.job_id, message_id, meta, content, error):
                self.send(session_pb2.SiteMessage(task_reply=chunk))
        except InsituError as e:
            log.warning("job %s: reply not sent: %s", job.job_id, e.detail)
