"""The shipped safe-harbor base covers the 18 HIPAA identifier types, and a dataset
that tries to keep any of them gets the base action instead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from site_node.deid import DEFAULT_POLICY_DIR, parse_policy, prepare_release

BASE = yaml.safe_load((DEFAULT_POLICY_DIR / "safe-harbor.yaml").read_text())
# 45 CFR 164.514(b)(2)(i)(A)-(R), by the words a title must contain.
IDENTIFIERS = {
    "A": "Names",
    "B": "Geographic",
    "C": "dates",
    "D": "Telephone",
    "E": "Fax",
    "F": "mail",
    "G": "Social security",
    "H": "Medical record",
    "I": "Health plan",
    "J": "Account",
    "K": "Certificate",
    "L": "Vehicle",
    "M": "Device",
    "N": "URL",
    "O": "IP",
    "P": "Biometric",
    "Q": "photographic",
    "R": "unique identifying",
}
REQUIRED_TAGS = {
    "name",
    "geo_subdivision",
    "address",
    "zip",
    "date",
    "phone",
    "fax",
    "email",
    "ssn",
    "mrn",
    "health_plan_id",
    "account_number",
    "certificate_license",
    "vehicle_id",
    "device_id",
    "url",
    "ip",
    "biometric",
    "photo",
    "other_unique_id",
}
TAGS = {tag: spec for entry in BASE["identifiers"].values() for tag, spec in entry["tags"].items()}
# A raw value per tag that must never survive (dates and ages are generalized instead).
SAMPLES = {
    "name": "Jane Q Public",
    "geo_subdivision": "Springfield County",
    "address": "12 Elm St",
    "zip": "02139",
    "date": "2024-03-17",
    "birth_date": "1931-05-06",
    "age": 94,
    "phone": "617-555-0101",
    "fax": "617-555-0199",
    "email": "jane@example.org",
    "ssn": "123-45-6789",
    "mrn": "MRN000123",
    "health_plan_id": "HP-998877",
    "account_number": "ACCT-55443322",
    "certificate_license": "LIC-A1B2C3",
    "vehicle_id": "1HGCM82633A004352",
    "device_id": "SN-PACE-0042",
    "url": "https://jane.example.org/",
    "ip": "203.0.113.7",
    "biometric": "FP:ab12cd34ef",
    "photo": "faces/jane.jpg",
    "other_unique_id": "UID-7Q7Q7Q",
    "free_text": "Jane fell",
}


def test_all_18_identifier_types_are_mapped() -> None:
    assert set(BASE["identifiers"]) == set(IDENTIFIERS)
    for letter, words in IDENTIFIERS.items():
        assert words.lower() in BASE["identifiers"][letter]["title"].lower(), letter


def test_every_required_tag_has_a_hiding_action() -> None:
    assert set(TAGS) >= REQUIRED_TAGS
    for tag, spec in TAGS.items():
        assert spec["action"] not in ("keep", "noise"), tag


def _keep_everything_doc() -> dict[str, Any]:
    columns: dict[str, Any] = {tag: {"action": "keep", "tags": [tag]} for tag in TAGS}
    columns["score"] = {"action": "keep"}
    return {
        "dataset": "everything",
        "version": 1,
        "base": "safe-harbor",
        "columns": columns,
        "quasi_identifiers": [],
        "k": 1,
        "max_suppression_fraction": 0.0,
        "purposes": ["test"],
    }


def test_keep_on_any_identifier_tag_is_overridden_by_the_base() -> None:
    policy = parse_policy(_keep_everything_doc(), base_loader=lambda _: BASE)
    for tag in TAGS:
        rule = policy.rule(tag)
        assert rule.action != "keep", tag
        assert rule.source.startswith("base:safe-harbor/"), tag
    assert policy.rule("score").action == "keep"


def test_no_raw_identifier_survives_a_release_under_the_base() -> None:
    policy = parse_policy(_keep_everything_doc(), base_loader=lambda _: BASE)
    frame = pd.DataFrame({tag: [SAMPLES[tag]] * 3 for tag in TAGS} | {"score": [1, 2, 3]})
    release = prepare_release(
        frame,
        policy,
        pseudonym_key=bytes(32),
        approver="steward",
        dataset_fingerprint="sha256:" + "a" * 64,
        rng=np.random.default_rng(0),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    for tag, raw in SAMPLES.items():
        if tag not in TAGS or isinstance(raw, int):
            continue
        assert str(raw).encode() not in release.batch, tag
    table = release.table.to_pydict()
    assert table["zip"] == ["021"] * 3
    assert table["date"] == [2024] * 3
    assert table["birth_date"] == [1936] * 3  # born 1931: over 89 in 2026, collapsed
    assert table["age"] == ["90+"] * 3
    for dropped in ("name", "address", "phone", "email", "url", "ip", "photo", "free_text"):
        assert dropped not in table


@pytest.mark.parametrize("tag", sorted(REQUIRED_TAGS))
def test_each_tag_alone_resolves_to_the_base(tag: str) -> None:
    doc = _keep_everything_doc()
    doc["columns"] = {tag: {"action": "keep", "tags": [tag]}, "score": {"action": "keep"}}
    rule = parse_policy(doc, base_loader=lambda _: BASE).rule(tag)
    assert (rule.action, dict(rule.params)) == (
        TAGS[tag]["action"],
        {k: v for k, v in TAGS[tag].items() if k != "action"},
    )
