"""Witnessing: a party cosigns another log's checkpoint only after checking it extends
the last checkpoint it saw from that log. A log that rewrites history then cannot get a
cosignature, and anyone holding an older cosigned checkpoint can prove the fork.

The transport (who sends what to whom) belongs to the services; this module is the offline
decision, so both sides and the auditor's tools share one implementation.

Example::

    cosigned = witness_checkpoint(
        new_note, log_key_name="insitu/coordinator", log_public_key=coord_pub,
        last_seen=previous_note, proof=[bytes.fromhex(h) for h in proof_hex],
        witness_name="site-a", signer=site_signer, witness_public_key=site_pub)
    store.add_witnessed("insitu/coordinator", new_size, cosigned)
"""

from __future__ import annotations

from collections.abc import Sequence

from insitu.audit.checkpoint import Checkpoint, Signer, add_cosignature, verify_checkpoint
from insitu.audit.errors import AuditError
from insitu.audit.merkle import verify_consistency

__all__ = ["check_extends", "witness_checkpoint"]


def check_extends(
    new_note: str,
    *,
    log_key_name: str,
    log_public_key: bytes,
    last_seen: str | None,
    proof: Sequence[bytes],
    origin: str | None = None,
) -> Checkpoint:
    """Verify ``new_note`` is signed by the log and consistent with ``last_seen``.

    Raises SignatureError, InvalidProofError, RootMismatchError or AuditError (a log that
    shrank or changed origin); returns the new checkpoint when all holds.
    """
    new = verify_checkpoint(new_note, log_key_name, log_public_key, origin=origin)
    if last_seen is None:
        if proof:
            raise AuditError("a first checkpoint needs no consistency proof")
        return new
    old = verify_checkpoint(last_seen, log_key_name, log_public_key, origin=new.origin)
    if new.size < old.size:
        raise AuditError(f"log shrank from {old.size} to {new.size} entries: refusing to cosign")
    verify_consistency(old.size, new.size, proof, old.root, new.root)
    return new


def witness_checkpoint(
    new_note: str,
    *,
    log_key_name: str,
    log_public_key: bytes,
    last_seen: str | None,
    proof: Sequence[bytes],
    witness_name: str,
    signer: Signer,
    witness_public_key: bytes,
    origin: str | None = None,
    timestamp: int | None = None,
) -> str:
    """:func:`check_extends`, then a C2SP cosignature/v1 by the witness."""
    check_extends(
        new_note,
        log_key_name=log_key_name,
        log_public_key=log_public_key,
        last_seen=last_seen,
        proof=proof,
        origin=origin,
    )
    return add_cosignature(new_note, witness_name, signer, witness_public_key, timestamp=timestamp)
