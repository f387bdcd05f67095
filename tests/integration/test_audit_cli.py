"""`insitu-audit` end to end over a real SQLite log: every command, and the exit codes
of its failure paths (1: verification failed, 2: bad input)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from insitu.audit.log import AuditLog
from insitu.audit.record import Actor, AuditRecord, Origin, Resource, format_time
from insitu.audit.sensitive import SensitiveValueHasher
from insitu.audit.signing import LocalSigner
from insitu.audit.sqlite_store import SqliteAuditStore
from insitu.cli.audit import app

ORIGIN = "insitu/cli-test"
HMAC_KEY = bytes(range(32))
runner = CliRunner()


@dataclass
class Fixture:
    dir: Path
    db: Path
    pub: Path
    seed: Path
    key_file: Path

    def run(self, *args: str | Path) -> tuple[int, str]:
        r = runner.invoke(app, [str(a) for a in args])
        return r.exit_code, r.output


def _rec(i: int, **kw: object) -> AuditRecord:
    fields: dict[str, object] = {
        "event_type": "rpc.request",
        "actor": Actor(f"spiffe://test.insitu/user/u{i % 2}", "mtls", role="analyst"),
        "action": "/insitu.v1.Models/Predict",
        "resource": Resource("model", f"m{i % 3}"),
        "outcome": "success",
        "origin": Origin("coordinator", "ipv4:127.0.0.1:1"),
    }
    fields.update(kw)
    return AuditRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    signer = LocalSigner.generate()
    f = Fixture(
        tmp_path,
        tmp_path / "audit.db",
        tmp_path / "pub.b64",
        tmp_path / "seed",
        tmp_path / "hmac.key",
    )
    signer.save(f.seed)
    f.pub.write_text(signer.public_key_b64() + "\n")
    f.key_file.write_text(base64.b64encode(HMAC_KEY).decode())
    hasher = SensitiveValueHasher(HMAC_KEY)
    old = datetime(2024, 1, 1, tzinfo=UTC)
    log = AuditLog(
        SqliteAuditStore(f.db),
        origin=ORIGIN,
        signer=signer.sign,
        key_name=ORIGIN,
        public_key=signer.public_key,
        checkpoint_every_s=0,
        lifecycle_events=False,
    )
    for i in range(6):  # two years old: prunable
        log.append(_rec(i, time=format_time(old + timedelta(days=i))))
    log.checkpoint()
    log.append(_rec(10, outcome="denied", reason_code="permission_denied"))
    log.append(
        _rec(
            11,
            event_type="site.enrol",
            action="site.enrol",
            resource=Resource("site", "b"),
            sensitive={"join_token": hasher.hmac("tok-secret-1")},
        )
    )
    log.append(_rec(12, break_glass=True, sensitive={"break_glass_reason": hasher.hmac("ER")}))
    log.close()
    return f


def _export(fx: Fixture) -> Path:
    out = fx.dir / "log.jsonl"
    code, text = fx.run("export", "--db", fx.db, "--out", out)
    assert code == 0, text
    return out


def test_export_and_verify(fx: Fixture) -> None:
    out = _export(fx)
    assert (fx.dir / "log.checkpoints.jsonl").is_file() and (fx.dir / "log.checkpoint").is_file()
    code, text = fx.run(
        "verify",
        out,
        "--checkpoint",
        fx.dir / "log.checkpoint",
        "--pubkey",
        fx.pub,
        "--origin",
        ORIGIN,
    )
    assert code == 0, text
    assert text.startswith("OK 9 entries, root ")
    code, text = fx.run(
        "verify", "--db", fx.db, "--checkpoint", fx.dir / "log.checkpoint", "--pubkey", fx.pub
    )
    assert code == 0 and "OK 9 entries" in text


def test_verify_reports_the_first_bad_index(fx: Fixture) -> None:
    out = _export(fx)
    lines = out.read_text().splitlines()
    obj = json.loads(lines[3])
    obj["record"]["outcome"] = "failure"
    lines[3] = json.dumps(obj)
    out.write_text("\n".join(lines) + "\n")
    code, text = fx.run(
        "verify", out, "--checkpoint", fx.dir / "log.checkpoint", "--pubkey", fx.pub
    )
    assert code == 1 and "FAILED" in text and "index 3" in text


def test_verify_with_the_wrong_key_fails(fx: Fixture) -> None:
    out = _export(fx)
    other = fx.dir / "other.b64"
    other.write_text(LocalSigner.generate().public_key_b64())
    code, text = fx.run("verify", out, "--checkpoint", fx.dir / "log.checkpoint", "--pubkey", other)
    assert code == 1 and "stage 1" in text


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "missing.jsonl", "--checkpoint", "missing.cp", "--pubkey", "missing.pub"),
        ("export", "--out", "x.jsonl"),  # no source
        ("export", "--db", "nope.db", "--out", "x.jsonl"),
        ("search", "--log", "nope.jsonl"),
        ("search", "--db", "{db}", "--outcome", "sideways"),
        ("search", "--db", "{db}", "--from", "yesterday"),
        ("report", "--db", "{db}", "--standard", "sox", "--out", "r.html"),
        ("verify", "--db", "{db}", "--checkpoint", "{db}", "--pubkey", "{db}"),  # garbage inputs
        ("prove-inclusion", "--db", "{db}", "--index", "999", "--out", "b.json"),
    ],
)
def test_bad_input_exits_2(fx: Fixture, args: tuple[str, ...]) -> None:
    code, text = fx.run(*(a.replace("{db}", str(fx.db)) for a in args))
    assert code == 2, text
    assert "error" in text.lower() or "usage" in text.lower()
    assert "Traceback" not in text


def test_proofs(fx: Fixture) -> None:
    b1, b2 = fx.dir / "incl.json", fx.dir / "cons.json"
    assert fx.run("prove-inclusion", "--db", fx.db, "--index", 2, "--out", b1)[0] == 0
    bundle = json.loads(b1.read_text())
    assert {"leaf_index", "tree_size", "leaf_hash", "hashes", "root", "checkpoint"} <= set(bundle)
    code, text = fx.run("verify-proof", b1, "--pubkey", fx.pub)
    assert code == 0 and "OK inclusion" in text and "warning" not in text
    code, text = fx.run("verify-proof", b1)
    assert code == 0 and "not verified" in text

    assert fx.run("prove-consistency", "--db", fx.db, "--from", 6, "--out", b2)[0] == 0
    assert fx.run("verify-proof", b2, "--pubkey", fx.pub)[0] == 0
    out = _export(fx)
    assert fx.run("prove-inclusion", "--log", out, "--index", 1, "--out", b1)[0] == 0
    assert fx.run("verify-proof", b1, "--pubkey", fx.pub)[0] == 0

    bundle["hashes"][0] = "00" * 32
    b1.write_text(json.dumps(bundle))
    code, text = fx.run("verify-proof", b1, "--pubkey", fx.pub)
    assert code == 1 and "mismatch" in text


def test_search(fx: Fixture) -> None:
    code, text = fx.run("search", "--db", fx.db, "--outcome", "denied", "--json")
    assert code == 0
    recs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [r["reason_code"] for r in recs] == ["permission_denied"]
    code, text = fx.run("search", "--db", fx.db, "--resource", "site:b")
    assert code == 0 and "1 matching records" in text
    code, text = fx.run(
        "search", "--log", _export(fx), "--from", "2024-01-03", "--to", "2024-01-05"
    )
    assert code == 0 and "2 matching records" in text


def test_report(fx: Fixture) -> None:
    out = fx.dir / "r.html"
    code, text = fx.run(
        "report",
        "--db",
        fx.db,
        "--standard",
        "pci-dss",
        "--out",
        out,
        "--checkpoint",
        _export(fx).with_suffix(".checkpoint"),
        "--pubkey",
        fx.pub,
    )
    assert code == 0, text
    html = out.read_text()
    assert "VERIFIED" in html and "10.2.1.4" in html and "<svg" in html
    code, _ = fx.run(
        "report",
        "--db",
        fx.db,
        "--standard",
        "hipaa",
        "--out",
        out,
        "--from",
        "2024-01-01",
        "--to",
        "2024-02-01",
    )
    assert code == 0 and "164.312(b)" in out.read_text()


def test_hmac_check(fx: Fixture) -> None:
    code, text = fx.run(
        "hmac-check", "--db", fx.db, "--key-file", fx.key_file, "--value", "tok-secret-1"
    )
    assert code == 0 and "sensitive.join_token" in text
    assert "tok-secret-1" not in text
    code, _ = fx.run(
        "hmac-check", "--db", fx.db, "--key-file", fx.key_file, "--value", "tok-secret-2"
    )
    assert code == 1


def test_prune(fx: Fixture) -> None:
    archive = fx.dir / "archive.json"
    base = (
        "prune",
        "--db",
        fx.db,
        "--archive",
        archive,
        "--origin",
        ORIGIN,
        "--actor",
        "spiffe://test.insitu/user/ops",
        "--signing-key",
        fx.seed,
    )
    code, text = fx.run(
        *base, "--before", (datetime.now(UTC) - timedelta(days=30)).date().isoformat()
    )
    assert code == 2 and "retention" in text and not archive.exists()
    code, text = fx.run(*base, "--before", "2024-01-04")
    assert code == 0, text
    assert "[0, 3)" in text
    code, text = fx.run("verify-archive", archive, "--pubkey", fx.pub)
    assert code == 0 and "OK archive of entries [0, 3)" in text
    out = _export(fx)
    code, text = fx.run(
        "verify", out, "--checkpoint", out.with_suffix(".checkpoint"), "--pubkey", fx.pub
    )
    assert code == 0 and "(3 pruned)" in text
    code, text = fx.run("search", "--db", fx.db, "--event-type", "audit.prune")
    assert code == 0 and "1 matching records" in text


def test_keygen(fx: Fixture) -> None:
    seed, pub = fx.dir / "k.seed", fx.dir / "k.pub"
    code, text = fx.run("keygen", "--out", seed, "--pubkey-out", pub)
    assert code == 0 and text.strip() == pub.read_text().strip()
    assert seed.stat().st_mode & 0o077 == 0
    assert fx.run("keygen", "--out", seed)[0] == 2  # never overwrites a key


def test_console_script_is_installed(fx: Fixture) -> None:
    exe = shutil.which("insitu-audit", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = _export(fx)
    r = subprocess.run(
        [
            exe,
            "verify",
            str(out),
            "--checkpoint",
            str(out.with_suffix(".checkpoint")),
            "--pubkey",
            str(fx.pub),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith("OK 9 entries")


def test_checkpoint_command(fx: Fixture) -> None:
    code, text = fx.run("checkpoint", "--db", fx.db)
    assert code == 0 and text.startswith(f"{ORIGIN}\n9\n")
    cp = fx.dir / "latest.cp"
    cp.write_text(text)
    assert fx.run("verify", "--db", fx.db, "--checkpoint", cp, "--pubkey", fx.pub)[0] == 0
