"""The egress guard: the one way out of a site daemon."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from insitu._proto.v1 import session_pb2
from insitu.attestation import ATTESTATION_TYPE, sign_attestation
from insitu.audit.signing import LocalSigner
from site_node.egress import EgressGuard, EgressRefused


def _guard() -> tuple[EgressGuard, list[tuple[str, str]]]:
    refused: list[tuple[str, str]] = []
    return EgressGuard(lambda k, r: refused.append((k, r))), refused


def _instruction() -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    m = Message(
        RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))})}),
        dst_node_id=5,
        message_type="train",
    )
    m.metadata.__dict__["_message_id"] = "m1"
    return m


def test_control_messages_pass_and_unknown_kinds_are_refused() -> None:
    g, refused = _guard()
    g.admit(session_pb2.SiteMessage(heartbeat=session_pb2.Heartbeat(seq=1)))
    with pytest.raises(EgressRefused):
        g.admit(session_pb2.SiteMessage())
    with pytest.raises(EgressRefused):
        g.admit(
            session_pb2.SiteMessage(task_reply=session_pb2.TaskChunk(job_id="j", message_id="nope"))
        )
    assert [k for k, _ in refused] == ["empty", "task_reply"]


def test_reply_must_match_the_global_model_and_carry_no_text() -> None:
    g, refused = _guard()
    ins = _instruction()
    g.expect_reply("j", "m1", message_to_proto(ins))
    bad = Message(
        RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((2, 4), np.float32))})}),
        reply_to=ins,
    )
    with pytest.raises(EgressRefused, match="does not match"):
        g.check_reply("j", "m1", message_to_proto(bad), 100)
    g.expect_reply("j", "m1", message_to_proto(ins))
    leak = Message(
        RecordDict(
            {"arrays": ins.content["arrays"], "cfg": ConfigRecord({"note": "Jane Doe, MRN 123"})}
        ),
        reply_to=ins,
    )
    with pytest.raises(EgressRefused, match="text or bytes"):
        g.check_reply("j", "m1", message_to_proto(leak), 100)
    # an answer to an instruction that never came is refused too
    with pytest.raises(EgressRefused, match="no instruction"):
        g.check_reply("j", "m1", message_to_proto(bad), 100)
    g.expect_reply("j", "m1", message_to_proto(ins))
    good = Message(RecordDict({"arrays": ins.content["arrays"]}), reply_to=ins)
    g.check_reply("j", "m1", message_to_proto(good), 100)
    chunk = session_pb2.TaskChunk(job_id="j", message_id="m1", last=True)
    g.admit(session_pb2.SiteMessage(task_reply=chunk))
    with pytest.raises(EgressRefused):  # exactly one reply per instruction
        g.admit(session_pb2.SiteMessage(task_reply=chunk))
    assert len(refused) == 4


def _attestation(batch: bytes, policy_hash: str = "sha256:" + "a" * 64) -> dict[str, object]:
    return {
        "type": ATTESTATION_TYPE,
        "dataset": "d",
        "dataset_fingerprint": "sha256:" + "b" * 64,
        "policy_hash": policy_hash,
        "policy_version": 1,
        "rows_in": 10,
        "rows_out": 9,
        "k_required": 5,
        "k_achieved": 5,
        "epsilon_charged": 0.0,
        "approver": "x",
        "purposes": ["p"],
        "created_at": "2026-11-21T00:00:00Z",
        "batch_format": "arrow-ipc-stream",
        "batch_sha256": hashlib.sha256(batch).hexdigest(),
    }


@pytest.mark.parametrize("case", ["ok", "tampered_batch", "other_key", "stale_policy"])
def test_feature_batch_needs_a_valid_current_attestation(case: str) -> None:
    g, refused = _guard()
    site, other = LocalSigner.generate(), LocalSigner.generate()
    batch = b"arrow-bytes" * 10
    signed = sign_attestation(
        _attestation(batch), (other if case == "other_key" else site).sign, "site/a"
    )
    current = "sha256:" + ("c" if case == "stale_policy" else "a") * 64
    sent = batch + (b"x" if case == "tampered_batch" else b"")
    chunk = session_pb2.SiteMessage(
        feature_batch=session_pb2.FeatureChunk(release_id="r1", last=True)
    )
    if case == "ok":
        g.check_feature_batch("r1", signed, sent, site.public_key, current)
        g.admit(chunk)
        return
    with pytest.raises(EgressRefused):
        g.check_feature_batch("r1", signed, sent, site.public_key, current)
    with pytest.raises(EgressRefused):
        g.admit(chunk)
    assert [k for k, _ in refused] == ["feature_batch", "feature_batch"]
