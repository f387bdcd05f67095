"""The fast record check never accepts what the JSON Schema rejects, and accepts the
valid records insitu produces."""

from __future__ import annotations

import copy
from typing import Any

from audit_support import make_record
from hypothesis import given, settings
from hypothesis import strategies as st

from insitu.audit._fastcheck import first_violation
from insitu.audit.record import Actor, AuthzInfo, Origin, Resource, _validator
from insitu.audit.sensitive import SensitiveValueHasher

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=10)
short = st.text(max_size=40)
opt = st.none() | short
H = SensitiveValueHasher(b"k" * 32)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    rec = make_record(
        draw(st.integers(0, 10)),
        actor=Actor(
            draw(st.none() | st.just("spiffe://t.insitu/user/a")),
            draw(st.sampled_from(["mtls", "join_token", "local", "cli"])),
            draw(st.none() | st.just("ab" * 32)),
            draw(opt),
            draw(opt),
            draw(opt),
        ),
        action=draw(st.text(min_size=1, max_size=60)),
        resource=Resource(draw(st.text(min_size=1, max_size=20)), draw(short)),
        outcome=draw(st.sampled_from(["success", "failure", "denied"])),
        origin=Origin(draw(st.text(min_size=1, max_size=20)), draw(opt)),
        reason_code=draw(opt),
        correlation_id=draw(opt),
        authz=draw(
            st.none()
            | st.builds(
                AuthzInfo,
                st.sampled_from(["allow", "deny"]),
                opt,
                st.lists(short, max_size=3).map(tuple),
            )
        ),
        sensitive={
            k: H.hmac(k) for k in draw(st.lists(st.sampled_from(["pan", "mrn", "tok"]), max_size=3))
        },
        attrs=draw(
            st.dictionaries(
                st.sampled_from(["a", "b.c", "n"]),
                st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | short,
                max_size=3,
            )
        ),
    )
    return rec.positioned(draw(st.integers(0, 2**40))).to_dict()


@settings(max_examples=120, deadline=None)
@given(records())
def test_valid_records_pass_both(d: dict[str, Any]) -> None:
    assert _validator().is_valid(d)
    assert first_violation(d) is None


paths = st.sampled_from(
    [
        ("v",),
        ("event_id",),
        ("seq",),
        ("time",),
        ("clock",),
        ("event_type",),
        ("actor",),
        ("actor", "spiffe_id"),
        ("actor", "cert_fingerprint"),
        ("actor", "auth_method"),
        ("actor", "role"),
        ("action",),
        ("resource",),
        ("resource", "type"),
        ("resource", "id"),
        ("outcome",),
        ("reason_code",),
        ("origin",),
        ("origin", "node"),
        ("origin", "peer"),
        ("correlation_id",),
        ("trace_id",),
        ("authz",),
        ("authz", "decision"),
        ("authz", "policy_ids"),
        ("break_glass",),
        ("sensitive",),
        ("sensitive", "pan"),
        ("attrs",),
        ("attrs", "x"),
        ("new_field",),
        ("actor", "new_field"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(records(), paths, json_values, st.booleans())
def test_fast_check_is_never_laxer_than_the_schema(
    d: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool
) -> None:
    d = copy.deepcopy(d)
    d["authz"] = d["authz"] or {"decision": "allow", "policy_hash": None, "policy_ids": []}
    target = d
    for p in path[:-1]:
        target = target[p]
    if delete:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    if first_violation(d) is None:
        assert _validator().is_valid(d), (path, value)
