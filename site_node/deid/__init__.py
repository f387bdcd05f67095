"""De-identification at the site: policies, vectorized transforms, k-anonymity, and
attested feature releases. Nothing raw leaves through here.

Example::

    from site_node.deid import load_policy, prepare_release, sign_attestation

    policy = load_policy("policies/deid/breast-cancer-patients.yaml", data_columns=frame.columns)
    release = prepare_release(frame, policy, pseudonym_key=key, approver=steward,
                              dataset_fingerprint=fingerprint, rng=np.random.default_rng())
    signed = sign_attestation(release.attestation, lambda b: keys.sign("release", b), "release")
    verify_attestation(signed, keys.public_key("release"), batch=release.batch,
                       expected_policy_hash=policy.hash)
"""

from site_node.deid.kanon import KAnonymity, enforce_k_anonymity, group_sizes
from site_node.deid.policy import (
    DEFAULT_POLICY_DIR,
    ColumnRule,
    Policy,
    load_policy,
    parse_policy,
    strictness,
)
from site_node.deid.release import (
    ATTESTATION_TYPE,
    BATCH_FORMAT,
    Release,
    SignedAttestation,
    apply_policy,
    prepare_release,
    read_batch,
    sign_attestation,
    verify_attestation,
)
from site_node.deid.transforms import LOW_POPULATION_ZIP3, PSEUDONYM_KEY_BYTES, pseudonym_key_id

__all__ = [
    "ATTESTATION_TYPE",
    "BATCH_FORMAT",
    "DEFAULT_POLICY_DIR",
    "LOW_POPULATION_ZIP3",
    "PSEUDONYM_KEY_BYTES",
    "ColumnRule",
    "KAnonymity",
    "Policy",
    "Release",
    "SignedAttestation",
    "apply_policy",
    "enforce_k_anonymity",
    "group_sizes",
    "load_policy",
    "parse_policy",
    "prepare_release",
    "pseudonym_key_id",
    "read_batch",
    "sign_attestation",
    "strictness",
    "verify_attestation",
]
