"""Jobs at a site: deciding on proposals (approved code, registered dataset, purpose,
ε budget), running approved tasks through the job's ClientApp worker, and sending
replies back only through the egress guard."""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.common.serde import recorddict_from_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from insitu._proto.v1 import session_pb2
from insitu.errors import InsituError
from insitu.flower.bundle import unpack_app
from insitu.flower.config import config_value
from insitu.identity.spiffe import SpiffeId
from insitu.rpc.chunks import Reassembler, split_message
from insitu.telemetry.tracing import extract_from_dict, tracer
from site_node.approvals import ApprovedCode
from site_node.egress import EgressGuard
from site_node.training.datasets import DatasetRegistry
from site_node.training.ledger import PrivacyLedger
from site_node.training.runner import ClientAppRunner, build_node_config

__all__ = ["SiteJobs"]

log = logging.getLogger(__name__)
Send = Callable[[session_pb2.SiteMessage], None]
Audit = Callable[[str, dict[str, str]], None]


def send_quietly(send: Send, msg: session_pb2.SiteMessage) -> None:
    """Send, or log that the session dropped (the coordinator re-proposes on reconnect)."""
    try:
        send(msg)
    except InsituError as e:
        log.warning("could not send %s: %s", msg.WhichOneof("body"), e.detail)


def node_id_for(spiffe_uri: str) -> int:
    # Must equal coordinator.flower_compat.node_id_for (sites and coordinator agree).
    n = int.from_bytes(hashlib.sha256(spiffe_uri.encode()).digest()[:8], "big") & ((1 << 63) - 1)
    return n or 1


@dataclass
class _Job:
    job_id: str
    code_sha256: str
    dataset: str
    runner: ClientAppRunner
    dp_epsilon: float
    work: queue.Queue[tuple[str, bytes, dict[str, str]] | None]


class SiteJobs:
    def __init__(
        self,
        *,
        site_dir: Path,
        site_id: str,
        trust_domain: str,
        datasets: DatasetRegistry,
        ledger: PrivacyLedger,
        approvals: ApprovedCode,
        guard: EgressGuard,
        send: Send,
        audit: Audit,
        max_message_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.site_dir = site_dir
        self.site_id = site_id
        self.node_id = node_id_for(SpiffeId.site(trust_domain, site_id).uri)
        self.datasets = datasets
        self.ledger = ledger
        self.approvals = approvals
        self.guard = guard
        self.send = send
        self.audit = audit
        self._jobs: dict[str, _Job] = {}
        # Jobs this site approved: job id -> (owner SPIFFE id, purpose, dataset).
        self.approved: dict[str, tuple[str, str, str]] = {}
        self._lock = threading.Lock()
        self._reassembler = Reassembler(max_message_bytes)
        self._traces: dict[tuple[str, str], dict[str, str]] = {}

    # -- inbound ---------------------------------------------------------------------

    def on_message(self, msg: session_pb2.CoordinatorMessage) -> None:
        kind = msg.WhichOneof("body")
        if kind == "job_proposal":
            threading.Thread(target=self._decide, args=(msg.job_proposal,), daemon=True).start()
        elif kind == "task":
            self._on_chunk(msg.task)
        elif kind == "job_end":
            self._end(msg.job_end.job_id, msg.job_end.outcome)

    def _decide(self, p: session_pb2.JobProposal) -> None:
        approved, reason, fingerprint = False, "", ""
        try:
            approved, reason, fingerprint = self._check_and_start(p)
        except InsituError as e:
            reason = e.detail or e.code.value
        except Exception as e:  # a broken app bundle must not take the daemon down
            log.exception("job %s could not start", p.job_id)
            reason = f"could not start the job ({type(e).__name__})"
        self.audit(
            "job.approve" if approved else "job.refuse",
            {
                "job_id": p.job_id,
                "code_sha256": p.code_sha256,
                "dataset": p.dataset,
                "reason": reason[:200],
            },
        )
        send_quietly(
            self.send,
            session_pb2.SiteMessage(
                job_decision=session_pb2.JobDecision(
                    job_id=p.job_id,
                    approved=approved,
                    reason=reason,
                    dataset_fingerprint=fingerprint,
                )
            ),
        )

    def _check_and_start(self, p: session_pb2.JobProposal) -> tuple[bool, str, str]:
        if hashlib.sha256(p.app_bundle).hexdigest() != p.code_sha256:
            return False, "app bundle does not match its code hash", ""
        if not self.approvals.is_approved(p.code_sha256):
            return False, "job code is not approved at this site", ""
        if p.dataset not in self.datasets:
            return False, f"dataset {p.dataset} is not registered here", ""
        ds = self.datasets.check_purpose(p.dataset, p.purpose)
        dp_eps = float(p.dp.epsilon) if p.dp.noise_multiplier > 0 else 0.0
        if dp_eps > 0 and not self._has_open_reservation(p.dataset, p.job_id):
            # Refuses over-budget work before any training; a rejoining site (after a
            # restart) keeps the reservation it already holds for this job.
            self.ledger.reserve(p.dataset, p.job_id, dp_eps)
        try:
            app_dir = self.site_dir / "jobs" / p.job_id / "app"
            if app_dir.exists():  # a rejoin after a restart: extract the verified bundle anew
                shutil.rmtree(app_dir)
            layout = unpack_app(p.app_bundle, app_dir)
            run_config: dict[str, str | int | float | bool] = dict(layout.config)
            run_config.update({k: config_value(v) for k, v in p.run_config.items()})
            if dp_eps > 0:
                run_config.update(
                    {
                        "dp-noise-multiplier": float(p.dp.noise_multiplier),
                        "dp-max-grad-norm": float(p.dp.max_grad_norm or 1.0),
                        "dp-delta": float(p.dp.delta or 1e-5),
                    }
                )
            else:
                run_config["dp-noise-multiplier"] = 0.0
            runner = ClientAppRunner(
                layout.directory,
                layout.clientapp,
                build_node_config(p.partition_id, p.num_partitions, ds.name, ds.path),
                run_id=int(p.run_id),
                node_id=self.node_id,
                run_config=run_config,
                on_message=lambda direction, mtype, size, ok: self.audit(
                    "job.message",
                    {
                        "job_id": p.job_id,
                        "direction": direction,
                        "message_type": mtype,
                        "bytes": str(size),
                        "ok": str(ok),
                        "code_sha256": p.code_sha256,
                    },
                ),
            )
            fingerprint = self.datasets.fingerprint(p.dataset)
        except BaseException:
            if dp_eps > 0:
                self.ledger.release(p.dataset, p.job_id)
            raise
        job = _Job(p.job_id, p.code_sha256, p.dataset, runner, dp_eps, queue.Queue())
        with self._lock:
            self._jobs[p.job_id] = job
            self.approved[p.job_id] = (p.owner, p.purpose, p.dataset)
        threading.Thread(
            target=self._work, args=(job,), name=f"job-{p.job_id}", daemon=True
        ).start()
        return True, "approved", fingerprint

    def _has_open_reservation(self, dataset: str, job_id: str) -> bool:
        total = 0.0
        for e in self.ledger.history(dataset):
            if e.job_id != job_id:
                continue
            if e.kind == "release":
                return False
            total += e.epsilon if e.kind == "reserve" else 0.0
        return total > 0

    def _on_chunk(self, chunk: session_pb2.TaskChunk) -> None:
        with self._lock:
            job = self._jobs.get(chunk.job_id)
        if job is None:
            log.warning("task for job %s, which this site did not approve: ignored", chunk.job_id)
            return
        if chunk.seq == 0:
            self._traces[(chunk.job_id, chunk.message_id)] = dict(chunk.trace)
        done = self._reassembler.add(chunk)
        if done is None:
            return
        trace = self._traces.pop((chunk.job_id, chunk.message_id), {})
        instruction = ProtoMessage(metadata=ProtoMetadata.FromString(done.metadata))
        if done.content is not None:
            instruction.content.CopyFrom(ProtoRecordDict.FromString(done.content))
        self.guard.expect_reply(job.job_id, done.message_id, instruction)
        job.work.put((done.message_id, instruction.SerializeToString(), trace))

    def _work(self, job: _Job) -> None:
        while (item := job.work.get()) is not None:
            message_id, request, trace = item
            # The coordinator's trace continues here: one job round is one trace.
            with tracer().start_as_current_span(
                "insitu.round.task", context=extract_from_dict(trace)
            ):
                self._handle(job, message_id, request)
        job.runner.close()

    def _handle(self, job: _Job, message_id: str, request: bytes) -> None:
        try:
            reply_bytes = job.runner.handle(request)
            reply = ProtoMessage.FromString(reply_bytes)
            self._charge_dp(job, reply)
            content = reply.content.SerializeToString() if reply.HasField("content") else None
            error = reply.error.SerializeToString() if reply.HasField("error") else None
            self.guard.check_reply(job.job_id, message_id, reply, len(content or b""))
            meta = reply.metadata.SerializeToString()
            for chunk in split_message(job.job_id, message_id, meta, content, error):
                self.send(session_pb2.SiteMessage(task_reply=chunk))
        except InsituError as e:
            log.warning("job %s: reply not sent: %s", job.job_id, e.detail)
            self.audit(
                "job.reply_refused",
                {"job_id": job.job_id, "code_sha256": job.code_sha256, "reason": e.detail[:200]},
            )

    def _charge_dp(self, job: _Job, reply: ProtoMessage) -> None:
        if job.dp_epsilon <= 0 or not reply.HasField("content"):
            return
        rd = recorddict_from_proto(reply.content)
        for rec in rd.metric_records.values():
            eps = rec.get("dp-epsilon")
            if isinstance(eps, int | float) and eps > 0:
                # Raises if the update would overspend the reservation: then it never leaves.
                self.ledger.charge(job.dataset, job.job_id, float(eps))

    def _end(self, job_id: str, outcome: str) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return
        job.work.put(None)
        self.guard.forget_job(job_id)
        if job.dp_epsilon > 0:
            self.ledger.release(job.dataset, job_id)
        self.audit(
            "job.end", {"job_id": job_id, "code_sha256": job.code_sha256, "outcome": outcome[:32]}
        )

    def job_dataset(self, job_id: str) -> str | None:
        with self._lock:
            j = self.approved.get(job_id)
        return j[2] if j else None

    def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for j in jobs:
            self._end(j, "site shutdown")
