"""The committed stubs are exactly what `make protos` generates, and every RPC in the
protos has an entry in the method table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from insitu._proto.v1 import admin_pb2, enrolment_pb2, jobs_pb2, session_pb2, site_pb2
from insitu.rpc.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr


def test_every_rpc_has_a_method_rule() -> None:
    declared = set()
    for mod in (admin_pb2, enrolment_pb2, jobs_pb2, session_pb2, site_pb2):
        for service in mod.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                declared.add(f"/{service.full_name}/{m.name}")
    assert declared, "no services found"
    missing = declared - set(METHODS)
    assert not missing, f"RPCs without a method rule: {sorted(missing)}"
