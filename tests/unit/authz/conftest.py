"""Fixtures for the authz tests: writable copies of the shipped policy directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ._support import POLICY_DIR


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped policies (schema, *.cedar, tests/)."""
    dst = tmp_path / "rbac"
    shutil.copytree(POLICY_DIR, dst)
    return dst
