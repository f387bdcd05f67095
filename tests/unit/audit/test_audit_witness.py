"""A witness cosigns only consistent growth; a log that rewrites history is caught."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from audit_support import ORIGIN, make_record

from insitu.audit.checkpoint import Checkpoint, sign_checkpoint, verify_cosignature
from insitu.audit.errors import AuditError, RootMismatchError, SignatureError
from insitu.audit.log import AuditLog
from insitu.audit.signing import LocalSigner
from insitu.audit.tree import MerkleTree
from insitu.audit.witness import witness_checkpoint

OpenLog = Callable[..., AuditLog]


def test_witness_cosigns_consistent_growth_and_refuses_a_rewrite(
    open_log: OpenLog, signer: LocalSigner, tmp_path: Path
) -> None:
    site = LocalSigner.generate()
    kw = {
        "log_key_name": ORIGIN,
        "log_public_key": signer.public_key,
        "witness_name": "site-a",
        "signer": site.sign,
        "witness_public_key": site.public_key,
    }
    log = open_log()
    for i in range(5):
        log.append(make_record(i))
    first = log.checkpoint()
    cos1 = witness_checkpoint(first.note, last_seen=None, proof=[], **kw)  # type: ignore[arg-type]
    verify_cosignature(cos1, "site-a", site.public_key)
    for i in range(5, 9):
        log.append(make_record(i))
    second = log.checkpoint()
    proof = log.consistency_proof(first.size, second.size)
    cos2 = witness_checkpoint(second.note, last_seen=first.note, proof=proof, **kw)  # type: ignore[arg-type]
    assert verify_cosignature(cos2, "site-a", site.public_key).name == "site-a"

    # The log (holding its real key) rewrites entry 2 and signs the rewritten tree.
    leaves = MerkleTree(log.store.leaf_hashes()).leaf_hashes()
    leaves[2] = b"\x00" * 32
    forked = MerkleTree(leaves)
    fork_note = sign_checkpoint(
        Checkpoint(ORIGIN, forked.size, forked.root()), ORIGIN, signer.sign, signer.public_key
    )
    with pytest.raises(RootMismatchError):
        witness_checkpoint(
            fork_note,
            last_seen=second.note,  # type: ignore[arg-type]
            proof=forked.consistency_proof(second.size, forked.size),
            **kw,
        )
    with pytest.raises(RootMismatchError):
        witness_checkpoint(
            fork_note,
            last_seen=first.note,  # type: ignore[arg-type]
            proof=forked.consistency_proof(first.size, forked.size),
            **kw,
        )
    with pytest.raises(AuditError, match="shrank"):
        witness_checkpoint(first.note, last_seen=second.note, proof=[], **kw)  # type: ignore[arg-type]
    mallory = LocalSigner.generate()
    forged = sign_checkpoint(second.checkpoint, ORIGIN, mallory.sign, mallory.public_key)
    with pytest.raises(SignatureError):
        witness_checkpoint(forged, last_seen=first.note, proof=proof, **kw)  # type: ignore[arg-type]
