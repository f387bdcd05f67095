"""Search filters, HMAC look-ups and the self-contained HTML report."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from audit_support import make_record

from insitu.audit.record import Actor, Resource
from insitu.audit.report import IntegrityStatus, build_report
from insitu.audit.search import SearchQuery, hmac_occurrences, search
from insitu.audit.sensitive import SensitiveValueHasher

HASHER = SensitiveValueHasher(b"k" * 32)


def _records() -> list[dict[str, object]]:
    recs = [
        make_record(0, time="2026-01-01T10:00:00.000000Z"),
        make_record(
            1, outcome="denied", reason_code="permission_denied", time="2026-01-02T10:00:00.000000Z"
        ),
        make_record(
            2,
            event_type="site.enrol",
            action="site.enrol",
            resource=Resource("site", "hospital-b"),
            time="2026-01-03T10:00:00.000000Z",
            sensitive={"token": HASHER.hmac("join-token-123")},
        ),
        make_record(
            3,
            break_glass=True,
            event_type="break_glass",
            sensitive={"break_glass_reason": HASHER.hmac("patient crashing")},
            time="2026-01-04T10:00:00.000000Z",
        ),
        make_record(
            4,
            actor=Actor("spiffe://test.insitu/user/<script>alert(1)</script>", "mtls"),
            outcome="failure",
            time="2026-01-05T10:00:00.000000Z",
        ),
        make_record(
            5, event_type="cert.renew", action="cert.renew", time="2026-01-06T10:00:00.000000Z"
        ),
        make_record(
            6, event_type="audit.prune", action="audit.prune", time="2026-01-07T10:00:00.000000Z"
        ),
    ]
    return [r.positioned(i).to_dict() for i, r in enumerate(recs)]


@pytest.mark.parametrize(
    ("query", "seqs"),
    [
        (SearchQuery(outcome="denied"), [1]),
        (SearchQuery(actor="user/u1"), [1]),
        (SearchQuery(action="site.enrol"), [2]),
        (SearchQuery(resource="site:hospital-b"), [2]),
        (SearchQuery(resource="hospital-b"), [2]),
        (SearchQuery(event_type="cert.renew"), [5]),
        (
            SearchQuery(
                since=datetime(2026, 1, 3, tzinfo=UTC), until=datetime(2026, 1, 5, tzinfo=UTC)
            ),
            [2, 3],
        ),
        (SearchQuery(outcome="success", actor="user/u0"), [0, 3, 6]),
    ],
)
def test_search(query: SearchQuery, seqs: list[int]) -> None:
    assert [r["seq"] for r in search(_records(), query)] == seqs


def test_hmac_occurrences() -> None:
    recs = _records()
    assert list(hmac_occurrences(recs, HASHER, "join-token-123")) == [(2, "token")]
    assert list(hmac_occurrences(recs, HASHER, "join-token-124")) == []
    assert list(hmac_occurrences(recs, SensitiveValueHasher(b"x" * 32), "join-token-123")) == []


@pytest.mark.parametrize("standard", ["pci-dss", "hipaa"])
def test_report_is_self_contained_and_labelled(standard: str) -> None:
    html = build_report(
        _records(),
        standard=standard,
        integrity=IntegrityStatus(True, "OK 7 entries"),
        generated_at=datetime(2026, 1, 8, tzinfo=UTC),
    )
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    # No external assets or scripts of any kind.
    assert not re.search(r"""(src|href)\s*=|<script|<link|@import|url\(""", html, re.I)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    if standard == "pci-dss":
        for req in (
            "10.2.1.1",
            "10.2.1.2",
            "10.2.1.3",
            "10.2.1.4",
            "10.2.1.5",
            "10.2.1.6",
            "10.2.1.7",
            "10.4.1.1",
        ):
            assert req in html
    else:
        assert "164.312(b)" in html and "164.312(a)(2)(ii)" in html
    assert "VERIFIED" in html
    assert "hmac-sha256" not in html  # sensitive fields are never shown


def test_report_period_and_failed_integrity() -> None:
    html = build_report(
        _records(),
        standard="hipaa",
        integrity=IntegrityStatus(False, "stage 3 at index 4"),
        since=datetime(2026, 1, 2, tzinfo=UTC),
        until=datetime(2026, 1, 3, tzinfo=UTC),
    )
    assert "1 events." in html and "FAILED" in html and "stage 3 at index 4" in html
