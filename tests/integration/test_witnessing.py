"""Issue #3 witnessing: sites cosign coordinator checkpoints after checking consistency,
the coordinator keeps site checkpoints and cosignatures, and a coordinator that rewrites
history is caught by the site (no cosignature, evidence kept, audited)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from coordinator.settings import CoordinatorSettings
from insitu._proto.v1 import session_pb2
from insitu.audit.checkpoint import Checkpoint, sign_checkpoint, verify_cosignature
from insitu.audit.merkle import hash_leaf
from insitu.keys import KeyService
from site_node.daemon import SiteDaemon
from site_node.settings import load_site_settings
from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for


def test_sites_and_coordinator_witness_each_other(
    make_coordinator: Callable[[CoordinatorSettings], RunningCoordinator],
    coordinator_settings: CoordinatorSettings,
    key_service: KeyService,
    tmp_path: Path,
) -> None:
    rc = make_coordinator(
        replace(coordinator_settings, audit_checkpoint_every_s=0.5, witness_interval_s=0.3)
    )
    s = enrol_site(rc, "hospital-w", tmp_path / "w")
    settings = load_site_settings(
        s.site_dir,
        heartbeat_interval_ms=300,
        backoff_initial_s=0.1,
        audit_checkpoint_every_s=0.5,
        witness_interval_s=0.3,
    )
    daemon = SiteDaemon(settings)
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    admin = None
    try:
        store = rc.coordinator.audit_log.store
        site_key = daemon.audit_log.public_key

        admin = rc.admin()

        def cosigned() -> list[str]:
            admin.list_sites()  # audited activity grows the coordinator's log
            return [n.note for n in store.witnessed("cosigned-by/hospital-w")]

        wait_for(lambda: len(cosigned()) >= 2, timeout=30, what="two cosigned checkpoints")
        wait_for(
            lambda: bool(store.witnessed("site/hospital-w")),
            timeout=30,
            what="a site checkpoint kept by the coordinator",
        )
        for note in cosigned():
            verify_cosignature(note, "site/hospital-w", site_key)
        sizes = [int(n.splitlines()[1]) for n in cosigned()]
        assert sizes == sorted(sizes)

        # A rewritten history: same origin, signed by the real coordinator key, but a tree
        # that does not extend what the site cosigned.
        witness = daemon.witness
        seen = witness.witnessed_size
        forged = Checkpoint(
            f"{rc.settings.trust_domain}/coordinator", seen + 5, hash_leaf(b"rewritten history")
        )
        note = sign_checkpoint(
            forged,
            "insitu-audit",
            lambda b: key_service.sign("audit-signing", b),
            key_service.public_key("audit-signing"),
        )
        before = witness.last_note
        assert not witness.on_offer(
            session_pb2.CheckpointOffer(note=note, from_size=seen, proof=[b"\x00" * 32])
        )
        assert witness.last_note == before
        assert list((s.site_dir / "witness" / "refused").iterdir())
        records = [
            json.loads(e.data)
            for e in daemon.audit_log.store.entries()
            if e.data and b'"audit.witness"' in e.data
        ]
        assert records and records[-1]["attrs"]["outcome"] == "refused"
    finally:
        if admin is not None:
            admin.close()
        daemon.stop()
        t.join(10)
