"""Policy loading: schema, default deny, semantic checks, base resolution, the hash."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from insitu.errors import ErrorCode, InsituError
from site_node.data.synthetic import FEATURE_COLUMNS, PATIENT_COLUMNS, TRANSACTION_COLUMNS
from site_node.deid import DEFAULT_POLICY_DIR, load_policy, parse_policy, strictness


def _base(name: str) -> Any:
    return yaml.safe_load((DEFAULT_POLICY_DIR / f"{name}.yaml").read_text())


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "dataset": "toy",
        "version": 1,
        "columns": {
            "ssn": {"action": "pseudonymize", "tags": ["ssn"]},
            "zip": {"action": "generalize", "kind": "zip", "tags": ["zip"]},
            "score": {"action": "keep"},
        },
        "quasi_identifiers": ["zip"],
        "k": 3,
        "max_suppression_fraction": 0.1,
        "purposes": ["research"],
    }
    doc.update(overrides)
    return doc


def _refused(doc: Any, *, code: ErrorCode = ErrorCode.POLICY_INVALID) -> str:
    with pytest.raises(InsituError) as err:
        parse_policy(doc, base_loader=_base)
    assert err.value.code is code
    return err.value.detail


# ----------------------------------------------------------------- shipped policies


def test_shipped_policies_load_against_the_generator_columns() -> None:
    patients = load_policy(
        DEFAULT_POLICY_DIR / "breast-cancer-patients.yaml",
        data_columns=[*PATIENT_COLUMNS, *FEATURE_COLUMNS, "target"],
    )
    cards = load_policy(
        DEFAULT_POLICY_DIR / "card-transactions.yaml", data_columns=TRANSACTION_COLUMNS
    )
    assert patients.base == ("safe-harbor", 1)
    assert patients.hash.startswith("sha256:") and len(patients.hash) == 71
    assert cards.rule("pan").action == "truncate_pan"
    assert cards.epsilon == pytest.approx(2.0)


def test_base_policy_file_is_not_a_dataset_policy() -> None:
    with pytest.raises(InsituError) as err:
        load_policy(DEFAULT_POLICY_DIR / "safe-harbor.yaml")
    assert err.value.code is ErrorCode.POLICY_INVALID


# ------------------------------------------------------------------- default deny


def test_unmapped_data_column_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_doc()))
    with pytest.raises(InsituError) as err:
        load_policy(
            path,
            data_columns=["ssn", "zip", "score", "diagnosis_text"],
            base_dir=DEFAULT_POLICY_DIR,
        )
    assert err.value.code is ErrorCode.POLICY_INVALID
    assert "diagnosis_text" in err.value.detail and "default deny" in err.value.detail


def test_policy_column_missing_from_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_doc()))
    with pytest.raises(InsituError) as err:
        load_policy(path, data_columns=["ssn", "zip"])
    assert "absent from the data" in err.value.detail and "score" in err.value.detail


def test_matching_columns_load(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_doc()))
    assert load_policy(path, data_columns=["score", "zip", "ssn"]).dataset == "toy"


# ------------------------------------------------------------------------ schema


def test_unknown_action_is_refused() -> None:
    doc = _doc()
    doc["columns"]["score"] = {"action": "encrypt"}
    assert "columns/score" in _refused(doc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("k"),
        lambda d: d.update(k=0),
        lambda d: d.update(max_suppression_fraction=1.5),
        lambda d: d.update(purposes=[]),
        lambda d: d.update(surprise=True),
        lambda d: d.update(base="hipaa-expert"),
        lambda d: d["columns"]["score"].update(epsilon=1.0),
        lambda d: d["columns"].update(amount={"action": "noise", "clip": [0, 1]}),
        lambda d: d["columns"].update(when={"action": "generalize"}),
        lambda d: d["columns"].update(when={"action": "generalize", "kind": "decade"}),
        lambda d: d["columns"].update(pan={"action": "truncate_pan", "keep_first": 8}),
        lambda d: d["columns"].update(x={"action": "keep", "tags": ["Bad Tag"]}),
        lambda d: d.update(columns={}),
    ],
)
def test_schema_violations_are_refused(mutate: Any) -> None:
    doc = _doc()
    mutate(doc)
    assert "violates the schema" in _refused(doc)


def test_non_string_keys_are_refused() -> None:
    doc = _doc()
    doc["columns"][1] = {"action": "keep"}
    assert "keys must be strings" in _refused(doc)


def test_not_a_mapping_is_refused() -> None:
    _refused(["dataset", "toy"])


def test_invalid_yaml_names_no_content(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: [unclosed\n")
    with pytest.raises(InsituError) as err:
        load_policy(path)
    assert "not valid YAML" in err.value.detail


# --------------------------------------------------------------------- semantics


def test_quasi_identifier_must_be_a_released_column() -> None:
    assert "not a policy column" in _refused(_doc(quasi_identifiers=["nope"]))
    doc = _doc(quasi_identifiers=["ssn"])
    doc["columns"]["ssn"] = {"action": "drop"}
    assert "dropped" in _refused(doc)


def test_noise_column_cannot_be_a_quasi_identifier() -> None:
    doc = _doc(quasi_identifiers=["score"])
    doc["columns"]["score"] = {"action": "noise", "epsilon": 1, "clip": [0, 1]}
    assert "noise" in _refused(doc)


def test_noise_clip_must_be_ordered() -> None:
    doc = _doc()
    doc["columns"]["score"] = {"action": "noise", "epsilon": 1, "clip": [5, 1]}
    assert "clip" in _refused(doc)


def test_policy_releasing_nothing_is_refused() -> None:
    doc = _doc(quasi_identifiers=[])
    doc["columns"] = {"a": {"action": "drop"}}
    assert "no column" in _refused(doc)


# ---------------------------------------------------------------- base resolution


def test_weaker_dataset_action_is_raised_to_the_base_action() -> None:
    doc = _doc(base="safe-harbor")
    doc["columns"]["ssn"] = {"action": "keep", "tags": ["ssn"]}
    doc["columns"]["zip"] = {"action": "keep", "tags": ["zip"]}
    policy = parse_policy(doc, base_loader=_base)
    assert policy.rule("ssn").action == "pseudonymize"
    assert policy.rule("ssn").source == "base:safe-harbor/G"
    assert (policy.rule("zip").action, policy.rule("zip").kind) == ("generalize", "zip")


def test_stricter_dataset_action_wins() -> None:
    doc = _doc(base="safe-harbor", quasi_identifiers=[])
    doc["columns"]["zip"] = {"action": "drop", "tags": ["zip"]}
    policy = parse_policy(doc, base_loader=_base)
    assert policy.rule("zip").action == "drop" and policy.rule("zip").source == "dataset"


def test_birth_date_needs_the_age_collapse() -> None:
    doc = _doc(base="safe-harbor")
    doc["columns"]["dob"] = {"action": "generalize", "kind": "date", "tags": ["birth_date"]}
    rule = parse_policy(doc, base_loader=_base).rule("dob")
    assert rule.params.get("birth") is True and rule.source == "base:safe-harbor/C"


def test_conflicting_base_tags_are_refused() -> None:
    doc = _doc(base="safe-harbor")
    doc["columns"]["odd"] = {"action": "keep", "tags": ["zip", "date"]}
    assert "unambiguously" in _refused(doc)


def test_strictness_order() -> None:
    order = [
        ("keep", {}),
        ("noise", {}),
        ("generalize", {"kind": "zip"}),
        ("pseudonymize", {}),
        ("drop", {}),
    ]
    ranks = [strictness(a, p) for a, p in order]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert strictness("generalize", {"kind": "free_text"}) == strictness("drop", {})


def test_base_without_all_18_identifiers_is_refused() -> None:
    base = _base("safe-harbor")
    del base["identifiers"]["Q"]
    with pytest.raises(InsituError) as err:
        parse_policy(_doc(base="safe-harbor"), base_loader=lambda _: base)
    assert "A to R" in err.value.detail


# --------------------------------------------------------------------------- hash


def test_hash_is_stable_across_key_order_and_comments() -> None:
    a = parse_policy(_doc(), base_loader=_base)
    reordered = dict(reversed(list(_doc().items())))
    reordered["columns"] = dict(reversed(list(_doc()["columns"].items())))
    reordered["columns"]["score"] = {"action": "keep", "note": "notes are not rules"}
    assert parse_policy(reordered, base_loader=_base).hash == a.hash


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(k=4),
        lambda d: d.update(version=2),
        lambda d: d["columns"]["score"].update(action="drop"),
        lambda d: d["columns"]["ssn"].update(domain="other"),
        lambda d: d.update(purposes=["research", "billing"]),
    ],
)
def test_hash_changes_with_any_rule(mutate: Any) -> None:
    doc = _doc()
    changed = copy.deepcopy(doc)
    mutate(changed)
    assert (
        parse_policy(changed, base_loader=_base).hash != parse_policy(doc, base_loader=_base).hash
    )
