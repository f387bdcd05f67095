"""A running job's rounds: grid events become one summary per round phase (audited and
persisted), ε totals, the last global model on disk, and the model's array layout."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message
from opentelemetry import context as otel_context

from coordinator.flower_grid import GridEvent
from coordinator.jobs.model_check import ArraySpec, array_spec
from coordinator.jobs.record import JobRecord
from coordinator.registry import arrays_to_npz
from insitu._proto.v1 import jobs_pb2
from insitu.flower.refusals import refusal_text
from insitu.telemetry.tracing import extract_from_dict

__all__ = ["RoundTracker"]

AuditFn = Callable[[str, dict[str, Any]], None]


class RoundTracker:
    """Turns grid events into per-round summaries, audit events and ε totals.

    Thread-safe: events arrive on every site's session thread and the ServerApp's; one
    lock makes each event's counting and summarizing atomic, so a round is summarized once,
    with all its replies. ``on_summary`` runs under the job lock, after the summary is
    appended to the job's history. The global model each round sends out is kept at
    ``snapshot`` (unsigned), so an interrupted job can be inspected.
    """

    def __init__(
        self,
        job: JobRecord,
        lock: threading.Condition,
        audit: AuditFn,
        *,
        on_summary: Callable[[jobs_pb2.RoundSummary], None] | None = None,
        snapshot: Path | None = None,
    ) -> None:
        self.job = job
        self.lock = lock
        self.audit = audit
        self.on_summary = on_summary or (lambda s: None)
        self.snapshot = snapshot
        self._events_lock = threading.Lock()
        self.sent: dict[tuple[str, str], int] = {}
        self.done: dict[tuple[str, str], list[GridEvent]] = {}
        self.started: dict[tuple[str, str], float] = {}
        self.any_train_success = False
        self.epsilon: dict[str, float] = {}
        self.final_metrics: dict[str, float] = {}
        # The arrays the job's first instruction carried: the final model must match them.
        self.model_layout: ArraySpec | None = None

    def on_event(self, e: GridEvent) -> None:
        # Replies arrive on session threads: bring the job's trace along for the records.
        token = otel_context.attach(extract_from_dict(self.job.trace))
        try:
            with self._events_lock:
                self._on_event(e)
        finally:
            otel_context.detach(token)

    def _on_event(self, e: GridEvent) -> None:
        key = (e.group_id, e.message_type.split(".")[0])
        if e.kind == "sent":
            if key not in self.started and e.instruction is not None:
                self._keep_model(e.instruction)
            self.sent[key] = self.sent.get(key, 0) + 1
            self.started.setdefault(key, time.monotonic())
            return
        if e.kind == "rejected":
            self.audit(
                "job.update_rejected",
                {
                    "job_id": self.job.job_id,
                    "site": e.site_id,
                    "reason": e.detail,
                    "code_sha256": self.job.code_sha256,
                },
            )
        self.done.setdefault(key, []).append(e)
        if len(self.done[key]) >= self.sent.get(key, 0):
            self._summarize(key)

    def _keep_model(self, instruction: Message) -> None:
        if not instruction.has_content() or not instruction.content.array_records:
            return
        record = next(iter(instruction.content.array_records.values()))
        arrays = {k: v.numpy() for k, v in record.items()}
        if self.model_layout is None:
            self.model_layout = array_spec(arrays)
        if self.snapshot is not None and all(np.isfinite(a).all() for a in arrays.values()):
            tmp = self.snapshot.with_suffix(".tmp")
            tmp.write_bytes(arrays_to_npz(arrays))
            os.replace(tmp, self.snapshot)

    def _summarize(self, key: tuple[str, str]) -> None:
        events = self.done.pop(key)
        ok = [
            e for e in events
            if e.kind == "reply" and e.reply is not None and not e.reply.has_error()
        ]
        failed = sorted({e.site_id for e in events if e not in ok})
        site_errors = sorted({_site_error(e) for e in events if e not in ok})
        metrics = _weighted_metrics([e.reply for e in ok if e.reply is not None])
        for e in ok:
            assert e.reply is not None
            for rec in e.reply.content.metric_records.values():
                eps = rec.get("dp-epsilon")
                if isinstance(eps, int | float):
                    self.epsilon[e.site_id] = self.epsilon.get(e.site_id, 0.0) + float(eps)
        round_no = int(key[0]) if key[0].isdigit() else 0
        summary = jobs_pb2.RoundSummary(
            round=round_no,
            phase=key[1],
            sites_ok=sorted(e.site_id for e in ok),
            sites_failed=failed,
            site_errors=site_errors,
            metrics=metrics,
            wall_seconds=time.monotonic() - self.started.pop(key, time.monotonic()),
        )
        if key[1] == "train" and ok:
            self.any_train_success = True
        if metrics:
            self.final_metrics.update({f"{key[1]}_{k}": v for k, v in metrics.items()})
        with self.lock:
            self.job.history.append(summary)
            self.job.current_round = max(self.job.current_round, round_no)
            self.job.epsilon = dict(self.epsilon)
            self.on_summary(summary)
            self.lock.notify_all()
        self.audit(
            "job.round",
            {
                "job_id": self.job.job_id,
                "code_sha256": self.job.code_sha256,
                "round": str(round_no),
                "phase": key[1],
                "sites_ok": ",".join(summary.sites_ok),
                "sites_failed": ",".join(failed),
                "site_errors": "; ".join(site_errors)[:400],
            },
        )


def _site_error(e: GridEvent) -> str:
    """``"<site>: <why>"``: a site's error code rendered from the catalog (its own reason
    text never shows), or what the coordinator itself saw (timeout, rejected update)."""
    if e.reply is not None and e.reply.has_error():
        return f"{e.site_id}: {refusal_text(e.reply.error.code)}"
    return f"{e.site_id}: {e.detail or e.kind}"


def _weighted_metrics(replies: list[Message]) -> dict[str, float]:
    totals: dict[str, float] = {}
    weight = 0.0
    for r in replies:
        for rec in r.content.metric_records.values():
            w = float(rec.get("num-examples", 1) or 1)  # type: ignore[arg-type]
            weight += w
            for k, v in rec.items():
                if k != "num-examples" and isinstance(v, int | float):
                    totals[k] = totals.get(k, 0.0) + w * float(v)
    return {k: v / weight for k, v in totals.items()} if weight else {}
