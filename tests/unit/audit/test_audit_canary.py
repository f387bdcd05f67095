"""Canaries: secrets, tokens and PANs given to the HMAC API never reach any stored byte."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_support import make_record

from insitu.audit.errors import RecordInvalidError
from insitu.audit.export import export_store
from insitu.audit.log import AuditLog
from insitu.audit.report import IntegrityStatus, build_report
from insitu.audit.search import records_from_store
from insitu.audit.sensitive import SensitiveValueHasher

OpenLog = Callable[..., AuditLog]


def test_canaries_never_stored(open_log: OpenLog, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    canaries = {
        "pan": "4111" + str(int(tag, 16))[:12].rjust(12, "7"),
        "patient_id": f"MRN-{tag}-CANARY",
        "token": f"s.canary-token-{tag}",
        "api_secret": f"sk_live_{tag}{tag}",
        "break_glass_reason": f"patient {tag} unconscious",
    }
    hasher = SensitiveValueHasher(uuid.uuid4().bytes + uuid.uuid4().bytes)
    log = open_log(lifecycle_events=True)
    for i in range(25):
        sensitive = {k: hasher.hmac(v) for k, v in canaries.items()}
        log.append(make_record(i, sensitive=sensitive, break_glass=True))
    # A careless caller passing a raw value is refused, and the refusal does not echo it.
    with pytest.raises(RecordInvalidError) as ei:
        log.append(make_record(99, sensitive={"pan": canaries["pan"]}))
    assert canaries["pan"] not in str(ei.value)
    log.checkpoint()
    store = log.store
    export_store(store, tmp_path / "export.jsonl")
    (tmp_path / "report.html").write_text(
        build_report(
            records_from_store(store), standard="pci-dss", integrity=IntegrityStatus(True, "ok")
        )
    )
    log.close()

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"audit.db", "export.jsonl", "report.html"}
    blob = b"".join(p.read_bytes() for p in files)
    assert hasher.hmac(canaries["pan"]).encode() in blob  # the canaries were planted...
    for value in canaries.values():  # ...but only ever as keyed HMACs
        for form in (value.encode(), value.encode("utf-16-le"), base64.b64encode(value.encode())):
            assert form not in blob, "a raw sensitive value reached storage"
