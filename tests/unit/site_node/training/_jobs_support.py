"""SiteJobs with real pieces: datasets.toml, the ε ledger, approved code, the egress guard,
real worker processes running the (benign) hostile test app. Proposals and tasks arrive as
real session protos; what the site sends and audits is recorded."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from insitu._proto.v1 import session_pb2
from insitu.flower.bundle import code_hash, pack_app
from insitu.rpc.chunks import Assembled, Reassembler, split_message
from insitu.sandbox import Limits
from site_node.approvals import ApprovedCode
from site_node.egress import EgressGuard
from site_node.training.capacity import CapacityBudget, JobCapacity
from site_node.training.datasets import load_datasets
from site_node.training.jobs import JobSandboxing, SiteJobs
from site_node.training.ledger import PrivacyLedger, open_ledger

REPO = Path(__file__).resolve().parents[4]
HOSTILE = REPO / "tests" / "apps" / "hostile"
WORKER_MODULE = b"site_node.training.worker"
RUN_ID = 31
ROWS = "x1,x2,x3,x4,note\n1.5,2.5,3.5,4.5,a\n0.1,0.2,0.3,0.4,b\n"
LIMITS = Limits(memory_mb=4096, cpu_seconds=600, processes=4096, open_files=1024,
                scratch_mb=64, message_timeout_s=60.0)


def write_site(site_dir: Path, *, epsilon_budget: float = 100.0) -> None:
    """``records`` (site DP) and ``plain`` (no DP) datasets, and the hostile app approved."""
    data = site_dir / "data"
    data.mkdir(parents=True)
    (data / "records.csv").write_text(ROWS)
    (site_dir / "datasets.toml").write_text(
        f'[datasets.records]\npath = "{data / "records.csv"}"\nformat = "csv"\n'
        f'label = "x1"\npurposes = ["research"]\nepsilon_budget = {epsilon_budget}\n'
        "dp = { clip_norm = 1.0, noise_multiplier = 1.1, delta = 1e-5 }\n"
        f'[datasets.plain]\npath = "{data / "records.csv"}"\nformat = "csv"\n'
        'label = "x1"\npurposes = ["research"]\nepsilon_budget = 1.0\n'
    )
    ApprovedCode(site_dir).approve(code_hash(pack_app(HOSTILE)), "test app")


def gpu_app(tmp: Path, site_dir: Path) -> Path:
    """The hostile app asking for a GPU (``[tool.insitu.resources] gpu = true``), approved."""
    app = tmp / "gpu-app"
    shutil.copytree(HOSTILE, app)
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("memory_mb = 1024",
                                                       "memory_mb = 1024\ngpu = true"))
    ApprovedCode(site_dir).approve(code_hash(pack_app(app)), "gpu test app")
    return app


def worker_pids(marker: str | None = None) -> list[int]:
    """Live job worker processes started by this process (their launcher, bwrap or
    prlimit+python, is our direct child), optionally only those whose command line or
    working directory names ``marker`` (a job's app folder)."""
    me, pids = os.getpid(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
            ppid, state = int(stat.rsplit(")", 1)[1].split()[1]), stat.rsplit(")", 1)[1].split()[0]
            if ppid != me or state == "Z" or WORKER_MODULE not in cmdline:
                continue
            if marker is not None and marker.encode() not in cmdline:
                cwd = os.readlink(proc / "cwd")
                if marker not in cwd:
                    continue
        except (OSError, ValueError, IndexError):
            continue
        pids.append(int(proc.name))
    return sorted(pids)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Site:
    """A SiteJobs wired to recorders; drive it with real protos."""

    jobs: SiteJobs
    ledger: PrivacyLedger
    node_id: int
    bundle: bytes
    sent: list[session_pb2.SiteMessage] = field(default_factory=list)
    events: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    cv: threading.Condition = field(default_factory=threading.Condition)

    def record_send(self, msg: session_pb2.SiteMessage) -> None:
        with self.cv:
            self.sent.append(msg)
            self.cv.notify_all()

    def record_audit(self, event: str, attrs: dict[str, str]) -> None:
        with self.cv:
            self.events.append((event, dict(attrs)))
            self.cv.notify_all()

    def audited(self, event: str, job_id: str | None = None) -> list[dict[str, str]]:
        with self.cv:
            return [a for e, a in self.events
                    if e == event and (job_id is None or a.get("job_id") == job_id)]

    def decisions(self, job_id: str) -> list[session_pb2.JobDecision]:
        with self.cv:
            return [m.job_decision for m in self.sent
                    if m.HasField("job_decision") and m.job_decision.job_id == job_id]

    def proposal(self, job_id: str, *, dataset: str = "records", rounds: int = 3,
                 code_sha256: str | None = None) -> session_pb2.JobProposal:
        return session_pb2.JobProposal(
            job_id=job_id, code_sha256=code_sha256 or code_hash(self.bundle),
            app_bundle=self.bundle, dataset=dataset, rounds=rounds,
            owner="spiffe://t.test/user/eve", purpose="research", partition_id=1,
            num_partitions=2, run_id=RUN_ID,
        )

    def propose(self, job_id: str, **kw: object) -> session_pb2.JobDecision:
        """Deliver a proposal as the session does; returns the site's decision on it."""
        before = len(self.decisions(job_id))
        self.jobs.on_message(session_pb2.CoordinatorMessage(
            job_proposal=self.proposal(job_id, **kw)))  # type: ignore[arg-type]
        with self.cv:
            ok = self.cv.wait_for(lambda: len(self.decisions(job_id)) > before, timeout=60)
        assert ok, f"no decision on {job_id}"
        return self.decisions(job_id)[-1]

    def task(self, job_id: str, message_type: str = "train") -> str:
        """Deliver one instruction (the global model's arrays) in chunks; its message id."""
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 0, 0
        arrays = ArrayRecord({"w": Array(np.zeros((4, 3), np.float32)),
                              "b": Array(np.zeros(3, np.float32))})
        msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=self.node_id, message_type=message_type, group_id="1")
        message_id = uuid.uuid4().hex
        msg.metadata.__dict__["_message_id"] = message_id  # no setter in flwr
        proto = message_to_proto(msg)
        for chunk in split_message(job_id, message_id, proto.metadata.SerializeToString(),
                                   proto.content.SerializeToString(), None):
            self.jobs.on_message(session_pb2.CoordinatorMessage(task=chunk))
        return message_id

    def replies(self) -> dict[str, Assembled]:
        ra, out = Reassembler(1 << 30), {}
        with self.cv:
            chunks = [m.task_reply for m in self.sent if m.HasField("task_reply")]
        for chunk in chunks:
            done = ra.add(chunk)
            if done is not None:
                out[done.message_id] = done
        return out

    def reply(self, message_id: str, timeout: float = 60.0) -> Assembled:
        wait_for(lambda: message_id in self.replies(), timeout, f"reply to {message_id}")
        return self.replies()[message_id]


def make_site(
    site_dir: Path, *, budget: CapacityBudget | None = None, sandboxed: bool = False,
    app: Path = HOSTILE, trust_domain: str = "t.test", site_id: str = "hospital-a",
) -> Site:
    """A site over ``site_dir`` (prepared by :func:`write_site`). Unsandboxed unless asked:
    the unit tests need real worker processes, not bubblewrap."""
    datasets = load_datasets(site_dir)
    ledger = open_ledger(site_dir, datasets)
    site = Site(jobs=None, ledger=ledger, node_id=0, bundle=pack_app(app))  # type: ignore[arg-type]
    site.jobs = SiteJobs(
        site_dir=site_dir, site_id=site_id, trust_domain=trust_domain, datasets=datasets,
        ledger=ledger, approvals=ApprovedCode(site_dir),
        guard=EgressGuard(lambda route, rule: None), send=site.record_send,
        audit=site.record_audit,
        sandboxing=JobSandboxing(LIMITS, unsafe_unsandboxed=not sandboxed),
        capacity=JobCapacity(budget or CapacityBudget(max_jobs=2, total_memory_mb=8192)),
    )
    site.node_id = site.jobs.node_id
    return site
