"""The epsilon ledger: reserve before training, charge within the reservation, survive crashes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from insitu.errors import ErrorCode, InsituError
from site_node.training import LEDGER_FILE, PrivacyLedger, load_datasets, open_ledger

BUDGETS = {"bcw": 3.0, "claims": 1.0}


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / LEDGER_FILE, BUDGETS)


def test_reserve_charge_release_accounting(ledger: PrivacyLedger) -> None:
    ledger.reserve("bcw", "job-1", 1.5)
    assert ledger.reserved("bcw") == 1.5 and ledger.spent("bcw") == 0
    ledger.charge("bcw", "job-1", 0.5)
    ledger.charge("bcw", "job-1", 0.5)
    assert ledger.spent("bcw") == 1.0
    assert ledger.reserved("bcw") == pytest.approx(0.5)
    assert ledger.release("bcw", "job-1") == pytest.approx(0.5)
    assert ledger.reserved("bcw") == 0
    assert ledger.remaining("bcw") == pytest.approx(2.0)
    assert ledger.release("bcw", "job-1") == 0  # idempotent
    kinds = [(e.kind, e.job_id, e.epsilon) for e in ledger.history("bcw")]
    assert kinds == [("reserve", "job-1", 1.5), ("charge", "job-1", 0.5),
                     ("charge", "job-1", 0.5), ("release", "job-1", pytest.approx(0.5))]
    assert all(e.budget == 3.0 for e in ledger.history("bcw"))
    assert ledger.history("claims") == []  # per dataset


def test_overspend_is_refused_before_training_with_numbers(ledger: PrivacyLedger) -> None:
    ledger.reserve("bcw", "job-1", 1.0)
    ledger.charge("bcw", "job-1", 1.0)
    ledger.reserve("bcw", "job-2", 1.5)
    with pytest.raises(InsituError) as caught:
        ledger.reserve("bcw", "job-3", 0.6)
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    detail = caught.value.detail
    assert "spent 1 " in detail and "reserved 1.5" in detail
    assert "requested 0.6" in detail and "budget 3" in detail
    assert [e.job_id for e in ledger.history("bcw")].count("job-3") == 0  # nothing recorded
    ledger.reserve("bcw", "job-3", 0.5)  # an exact fit is allowed
    assert ledger.remaining("bcw") == 0


def test_charge_cannot_exceed_the_reservation(ledger: PrivacyLedger) -> None:
    with pytest.raises(InsituError, match="open reservation 0"):
        ledger.charge("bcw", "job-1", 0.1)
    ledger.reserve("bcw", "job-1", 0.5)
    ledger.charge("bcw", "job-1", 0.4)
    with pytest.raises(InsituError, match="must not leave the site") as caught:
        ledger.charge("bcw", "job-1", 0.2)
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert ledger.spent("bcw") == pytest.approx(0.4)
    ledger.release("bcw", "job-1")
    with pytest.raises(InsituError):
        ledger.charge("bcw", "job-1", 0.05)  # released: nothing left to charge


def test_invalid_requests(ledger: PrivacyLedger) -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InsituError) as caught:
            ledger.reserve("bcw", "job-1", bad)
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(InsituError) as caught:
        ledger.reserve("unknown", "job-1", 0.1)
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_entries_are_append_only(ledger: PrivacyLedger, tmp_path: Path) -> None:
    ledger.reserve("bcw", "job-1", 1.0)
    ledger.charge("bcw", "job-1", 1.0)
    db = sqlite3.connect(tmp_path / LEDGER_FILE)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE privacy_ledger SET epsilon = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM privacy_ledger")
    db.close()
    assert ledger.spent("bcw") == 1.0


def test_wal_and_full_sync(ledger: PrivacyLedger) -> None:
    db = ledger._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


_CRASH = """
import os, sys
from pathlib import Path
from site_node.training.ledger import PrivacyLedger
ledger = PrivacyLedger(Path(sys.argv[1]), {"bcw": 3.0})
ledger.reserve("bcw", "committed", 1.0)
ledger._db.execute("BEGIN IMMEDIATE")
ledger._db.execute(
    "INSERT INTO privacy_ledger (at, dataset, job_id, kind, epsilon, budget) "
    "VALUES ('t', 'bcw', 'torn', 'charge', 2.0, 3.0)")
os._exit(9)  # die mid-transaction, as a power cut or SIGKILL would
"""


def test_crash_keeps_committed_entries_and_drops_torn_ones(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    done = subprocess.run([sys.executable, "-c", _CRASH, str(path)], check=False)
    assert done.returncode == 9
    ledger = PrivacyLedger(path, {"bcw": 3.0})
    assert [(e.job_id, e.kind) for e in ledger.history("bcw")] == [("committed", "reserve")]
    assert ledger.spent("bcw") == 0 and ledger.reserved("bcw") == 1.0  # still held: safe side
    assert ledger._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with pytest.raises(InsituError):
        ledger.reserve("bcw", "job-2", 2.5)


def test_two_handles_share_one_budget(tmp_path: Path) -> None:
    first = PrivacyLedger(tmp_path / LEDGER_FILE, BUDGETS)
    second = PrivacyLedger(tmp_path / LEDGER_FILE, BUDGETS)
    first.reserve("claims", "job-1", 0.7)
    with pytest.raises(InsituError):
        second.reserve("claims", "job-2", 0.4)
    first.close()
    second.close()


def test_open_ledger_takes_budgets_from_datasets_toml(tmp_path: Path) -> None:
    (tmp_path / "datasets.toml").write_text(
        '[datasets.bcw]\npath = "bcw.csv"\nformat = "csv"\nlabel = "target"\n'
        'purposes = ["training"]\nepsilon_budget = 2.5\n'
    )
    with open_ledger(tmp_path, load_datasets(tmp_path)) as ledger:
        assert ledger.path == tmp_path / LEDGER_FILE
        assert ledger.budget("bcw") == 2.5
        ledger.reserve("bcw", "job", 2.5)
        assert ledger.remaining("bcw") == 0
