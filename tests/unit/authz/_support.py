"""Constants shared by the authz tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
POLICY_DIR = REPO / "policies" / "rbac"
NOW = 1_800_000_000
ROOT = "spiffe://demo.insitu/user/root"
ALICE = "spiffe://demo.insitu/user/alice"
SITE_A = "spiffe://demo.insitu/site/hospital-a"
