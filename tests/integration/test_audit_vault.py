"""The audit log with the real Vault (OpenBao dev server): checkpoints signed by the
transit key `audit-signing` verify offline, and HMACs use an unwrapped transit data key."""

from __future__ import annotations

from pathlib import Path

from insitu.audit.checkpoint import add_cosignature, verify_checkpoint, verify_cosignature
from insitu.audit.export import export_store, read_checkpoint_notes
from insitu.audit.log import AuditLog
from insitu.audit.record import Actor, AuditRecord, Origin, Resource
from insitu.audit.sensitive import SensitiveValueHasher
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore
from insitu.audit.verify import verify_export
from insitu.keys import KeyService

ORIGIN = "insitu/vault-test"


def test_vault_signed_checkpoints_verify_offline(key_service: KeyService, tmp_path: Path) -> None:
    pub = key_service.public_key("audit-signing")
    data_key = key_service.generate_data_key("data-wrapping")
    hasher = SensitiveValueHasher(key_service.unwrap("data-wrapping", data_key.wrapped))
    log = AuditLog(
        SqliteAuditStore(tmp_path / "audit.db"),
        origin=ORIGIN,
        signer=lambda m: key_service.sign("audit-signing", m),
        key_name=ORIGIN,
        public_key=pub,
        checkpoint_every_s=0,
    )
    for i in range(5):
        log.append(
            AuditRecord(
                event_type="token.create",
                actor=Actor("spiffe://test.insitu/user/ops", "mtls"),
                action="token.create",
                resource=Resource("site", f"s{i}"),
                outcome="success",
                origin=Origin("coordinator"),
                sensitive={"token": hasher.hmac(f"join-{i}")},
            )
        )
    signed = log.checkpoint()
    assert verify_checkpoint(signed.note, ORIGIN, pub, origin=ORIGIN).size == 6
    assert SensitiveValueHasher(data_key.plaintext).matches("join-3", hasher.hmac("join-3"))

    # A site witnesses the coordinator's checkpoint with its own key.
    site = LocalSigner.generate()
    cosigned = add_cosignature(signed.note, "site-a", site.sign, site.public_key)
    verify_cosignature(cosigned, "site-a", site.public_key)
    log.store.add_witnessed(ORIGIN, signed.size, cosigned)
    log.close(close_store=False)

    store = log.store
    export_store(store, tmp_path / "log.jsonl")
    store.close()
    res = verify_export(
        (tmp_path / "log.jsonl").read_text().splitlines(),
        (tmp_path / "log.checkpoint").read_text(),
        pub,  # nothing but the public key: no Vault involved from here on
        checkpoint_notes=read_checkpoint_notes(tmp_path / "log.checkpoints.jsonl"),
    )
    assert res.size == 7
