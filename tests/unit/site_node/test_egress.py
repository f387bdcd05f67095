"""The egress guard: the one way out of a site daemon."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from insitu._proto.v1 import session_pb2
from insitu.attestation import ATTESTATION_TYPE, sign_attestation
from insitu.audit.signing import LocalSigner
from insitu.errors import InsituError
from insitu.flower.declaration import AppDeclaration
from insitu.flower.refusals import SiteRefusal, refusal_text
from site_node.egress import EgressBounds, EgressGuard, EgressRefused
from site_node.training.reply import ParsedInstruction, ParsedReply


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


DECL = AppDeclaration(metric_keys=frozenset({"num-examples", "train-loss"}))


def _reply(ins: Message, content: RecordDict) -> ParsedReply:
    return ParsedReply.parse(message_to_proto(Message(content, reply_to=ins)).SerializeToString())


def _owed(g: EgressGuard, ins: Message) -> None:
    g.register_job("j", DECL)
    g.expect_reply("j", "m1", ParsedInstruction.parse(message_to_proto(ins)).arrays)


def _arrays(shape: tuple[int, ...] = (2, 3), dtype: type = np.float32) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(shape, dtype))})


CANARY = "CANARY-7f3a Jane Doe, MRN 123"


@pytest.mark.parametrize(
    ("content", "refusal", "rule"),
    [
        (RecordDict({"arrays": _arrays((2, 4))}), SiteRefusal.ARRAYS_MISMATCH, "arrays differ"),
        (RecordDict({"arrays": _arrays(dtype=np.float64)}), SiteRefusal.ARRAYS_MISMATCH,
         "arrays differ"),
        (RecordDict({"arrays": _arrays(), "extra": _arrays()}), SiteRefusal.ARRAYS_MISMATCH,
         "arrays differ"),
        (RecordDict({"other": _arrays()}), SiteRefusal.ARRAYS_MISMATCH, "arrays differ"),
        (RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((2, 3), np.float32)),
                                            "w2": Array(np.zeros(3, np.float32))})}),
         SiteRefusal.ARRAYS_MISMATCH, "arrays differ"),
        (RecordDict({"arrays": _arrays(), "metrics": ConfigRecord({"train-loss": CANARY})}),
         SiteRefusal.METRIC_VALUE_NOT_NUMERIC, "text or bytes"),
        (RecordDict({"arrays": _arrays(), "metrics": ConfigRecord({"train-loss": CANARY.encode()})}),
         SiteRefusal.METRIC_VALUE_NOT_NUMERIC, "text or bytes"),
        (RecordDict({"arrays": _arrays(), "metrics": MetricRecord({CANARY.replace(" ", ""): 1.0})}),
         SiteRefusal.METRIC_KEY_UNDECLARED, "key not declared"),
        (RecordDict({"arrays": _arrays(), CANARY: MetricRecord({"train-loss": 1.0})}),
         SiteRefusal.METRIC_RECORD_UNDECLARED, "record name not declared"),
        (RecordDict({"arrays": _arrays(), "metrics": MetricRecord({"train-loss": [1.0] * 65})}),
         SiteRefusal.METRICS_TOO_LARGE, "list longer"),
    ],
)
def test_reply_breaking_the_contract_is_refused_and_audited_without_payload(
    content: RecordDict, refusal: SiteRefusal, rule: str
) -> None:
    g, refused = _guard()
    ins = _instruction()
    _owed(g, ins)
    with pytest.raises(EgressRefused, match=rule) as err:
        g.check_reply("j", "m1", _reply(ins, content))
    assert err.value.refusal is refusal
    assert len(refused) == 1 and refused[0][0] == "task_reply"
    assert "CANARY" not in repr(refused) and "CANARY" not in str(err.value)
    # the owed slot stays open for the code-only error reply that goes in its place
    assert g.clear_error("j", "m1", refusal) == refusal_text(refusal)
    g.admit(session_pb2.SiteMessage(
        task_reply=session_pb2.TaskChunk(job_id="j", message_id="m1", last=True)))


def test_entry_count_and_record_bytes_are_bounded() -> None:
    g, _ = _guard()
    g.bounds = EgressBounds(max_entries=2, max_record_bytes=10_000)
    ins = _instruction()
    _owed(g, ins)
    many = MetricRecord({"num-examples": 1, "train-loss": 1.0})
    many2 = ConfigRecord({"train-loss": 2.0})
    decl = AppDeclaration(metric_keys=DECL.metric_keys,
                          metric_records=frozenset({"metrics", "more"}))
    g.register_job("j", decl)
    with pytest.raises(EgressRefused, match="more than 2") as err:
        g.check_reply("j", "m1", _reply(ins, RecordDict({"metrics": many, "more": many2})))
    assert err.value.refusal is SiteRefusal.METRICS_TOO_LARGE
    g.bounds = EgressBounds(max_record_bytes=64)
    with pytest.raises(EgressRefused, match="bytes"):
        g.check_reply("j", "m1", _reply(ins, RecordDict(
            {"metrics": MetricRecord({"train-loss": [0.5] * 60})})))


def test_arrays_answering_an_instruction_without_arrays_are_refused() -> None:
    g, _ = _guard()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    ins = Message(RecordDict(), dst_node_id=5, message_type="evaluate")
    ins.metadata.__dict__["_message_id"] = "m1"
    _owed(g, ins)
    with pytest.raises(EgressRefused) as err:
        g.check_reply("j", "m1", _reply(ins, RecordDict({"arrays": _arrays()})))
    assert err.value.refusal is SiteRefusal.ARRAYS_UNEXPECTED


def test_error_reply_leaves_with_its_code_only() -> None:
    g, _ = _guard()
    ins = _instruction()
    _owed(g, ins)
    err_reply = ParsedReply.parse(message_to_proto(
        Message(Error(code=2, reason=CANARY), reply_to=ins)).SerializeToString())
    with pytest.raises(EgressRefused) as err:
        g.check_reply("j", "m1", err_reply)
    assert err.value.refusal is SiteRefusal.ERROR_REASON_REPLACED
    # a code outside the catalog (64 bits of data) is replaced too
    assert g.public_code(0x7EADBEEF) == 2 and g.public_code(1011) == 1011
    assert g.clear_error("j", "m1", 0x7EADBEEF) == "ClientApp raised an exception"


def test_a_good_reply_leaves_once_and_only_for_an_owed_instruction() -> None:
    g, refused = _guard()
    ins = _instruction()
    good = _reply(ins, RecordDict({"arrays": _arrays(),
                                   "metrics": MetricRecord({"num-examples": 3, "train-loss": 0.1})}))
    g.register_job("j", DECL)
    with pytest.raises(EgressRefused, match="no instruction"):
        g.check_reply("j", "m1", good)
    _owed(g, ins)
    g.check_reply("j", "m1", good)
    g.release("j", "m1")
    chunk = session_pb2.TaskChunk(job_id="j", message_id="m1", last=True)
    g.admit(session_pb2.SiteMessage(task_reply=chunk))
    with pytest.raises(EgressRefused):  # exactly one reply per instruction
        g.admit(session_pb2.SiteMessage(task_reply=chunk))
    with pytest.raises(EgressRefused):
        g.release("j", "m1")
    assert len(refused) == 3


def test_encoded_reply_rebuilds_metadata_and_drops_bytes_hidden_behind_an_array() -> None:
    ins = _instruction()
    proto = message_to_proto(Message(RecordDict({"arrays": _arrays()}), reply_to=ins))
    proto.metadata.group_id = CANARY
    arr = proto.content.items[0].array_record.items[0].value
    arr.data = arr.data + CANARY.encode() * 100  # trailing bytes np.load never reads
    reply = ParsedReply.parse(proto.SerializeToString())
    out = reply.encode(ParsedInstruction.parse(message_to_proto(ins)), node_id=5)
    wire = out.SerializeToString()
    assert CANARY.encode() not in wire
    assert out.metadata.reply_to_message_id == "m1" and out.metadata.src_node_id == 5


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


def test_a_record_with_a_key_and_no_value_is_refused() -> None:
    g, _ = _guard()
    ins = _instruction()
    _owed(g, ins)
    proto = message_to_proto(Message(RecordDict({"arrays": _arrays()}), reply_to=ins))
    proto.content.items.add(key=CANARY * 1000)  # a key, no record: the key is the payload
    reply = ParsedReply.parse(proto.SerializeToString())
    with pytest.raises(EgressRefused, match="no known kind"):
        g.check_reply("j", "m1", reply)
    with pytest.raises(InsituError):
        reply.encode(ParsedInstruction.parse(message_to_proto(ins)), node_id=5)


def test_encoded_reply_drops_unknown_fields_and_uses_a_fixed_order() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    layers = {f"l{i}": Array(np.zeros(2, np.float32)) for i in range(6)}
    ins = Message(RecordDict({"arrays": ArrayRecord(layers)}), dst_node_id=5,
                  message_type="train")
    ins.metadata.__dict__["_message_id"] = "m1"
    backwards = ArrayRecord({k: layers[k] for k in reversed(list(layers))})
    metrics = MetricRecord({"train-loss": 0.5, "num-examples": 3})
    proto = message_to_proto(Message(RecordDict({"metrics": metrics, "arrays": backwards}),
                                     reply_to=ins))
    # Hide bytes in an unknown protobuf field of the metric record.
    metric_item = next(i for i in proto.content.items if i.key == "metrics")
    metric_item.metric_record.items[0].value.MergeFromString(
        b"\xfa\x3f" + bytes([len(CANARY)]) + CANARY.encode())
    assert CANARY.encode() in proto.SerializeToString()
    reply = ParsedReply.parse(proto.SerializeToString())
    out = reply.encode(ParsedInstruction.parse(message_to_proto(ins)), node_id=5)
    assert CANARY.encode() not in out.SerializeToString()
    arrays = next(i for i in out.content.items if i.key == "arrays").array_record
    assert [a.key for a in arrays.items] == list(layers)  # the instruction's order
    entries = next(i for i in out.content.items if i.key == "metrics").metric_record
    assert [e.key for e in entries.items] == ["num-examples", "train-loss"]


def test_non_finite_metrics_are_refused() -> None:
    g, _ = _guard()
    ins = _instruction()
    _owed(g, ins)
    with pytest.raises(EgressRefused, match="not finite"):
        g.check_reply("j", "m1", _reply(ins, RecordDict(
            {"arrays": _arrays(), "metrics": MetricRecord({"train-loss": float("nan")})})))


def test_under_site_dp_metrics_are_few_scalars() -> None:
    g, _ = _guard()
    ins = _instruction()
    decl = AppDeclaration(metric_keys=frozenset({"num-examples", "train-loss"}
                                                | {f"m{i}" for i in range(10)}))
    g.register_job("j", decl, dp=True)
    g.expect_reply("j", "m1", ParsedInstruction.parse(message_to_proto(ins)).arrays)
    with pytest.raises(EgressRefused, match="list under site DP"):
        g.check_reply("j", "m1", _reply(ins, RecordDict(
            {"arrays": _arrays(), "metrics": MetricRecord({"train-loss": [1.0, 2.0]})})))
    many = MetricRecord({f"m{i}": float(i) for i in range(10)})
    with pytest.raises(EgressRefused, match="more than 8"):
        g.check_reply("j", "m1", _reply(ins, RecordDict({"arrays": _arrays(), "metrics": many})))
