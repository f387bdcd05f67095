"""`make demo`: a whole federation on one machine, on embedded defaults.

OpenBao (dev server) → coordinator → federation_admin bootstrap → join tokens →
three site daemons (hospital-a, -b, -c) enrol, register their local slice of the
breast-cancer Wisconsin data, approve the job's code hash, and dial in → an ML engineer
trains a federated model over 5 rounds and compares it with a centrally trained
baseline computed in the same run → the signed model is fetched and verified →
everything shuts down (also on Ctrl-C) → `insitu-audit verify` checks the coordinator's
log and each site's log offline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import hvac
from rich.console import Console
from rich.table import Table

from insitu._proto.v1 import jobs_pb2
from insitu.apps.breast_cancer.data import central_baseline, site_frames, write_site_csvs
from insitu.cli.progress import follow_job, job_outcome
from insitu.flower.bundle import app_from_module, code_hash, pack_app
from insitu.identity.admin_bootstrap import bootstrap_admin
from insitu.identity.credentials import (
    Credentials,
    build_csr,
    generate_private_key,
    key_to_pem,
    write_private_file,
)
from insitu.identity.spiffe import SpiffeId
from insitu.keys import DevVault, KeyService, approle_credentials, bootstrap_federation, free_port
from insitu.sdk import Client
from insitu.sdk.site_client import SiteClient

__all__ = ["run_demo"]

TRUST_DOMAIN = "demo.insitu"
SITES = ("hospital-a", "hospital-b", "hospital-c")
DEMO_APP = "insitu.apps.breast_cancer"
ROUNDS = 5
console = Console()


def _issue_user(keys: KeyService, name: str, out: Path) -> None:
    sid = SpiffeId.user(TRUST_DOMAIN, name)
    key = generate_private_key()
    cert = keys.sign_csr("user", build_csr(key, sid), uri_sans=[sid.uri], ttl_seconds=3600)
    Credentials(key_to_pem(key), cert.cert_pem, cert.chain_pem, keys.ca_bundle_pem()).save(out)


def _final_accuracy(job: object) -> float:
    history = getattr(job, "history", [])
    evals = [r for r in history if r.phase == "evaluate" and "eval-acc" in r.metrics]
    return float(evals[-1].metrics["eval-acc"]) if evals else 0.0


def _site_client(ws: Path, user: str, site: str) -> SiteClient:
    import json

    port = json.loads((ws / "sites" / site / "status.json").read_text())["api_port"]
    d = ws / user
    return SiteClient(
        f"127.0.0.1:{port}",
        d / "cert.pem",
        d / "key.pem",
        d / "ca.pem",
        site_id=site,
        trust_domain=TRUST_DOMAIN,
    )


def _serve(admin: Client, engineer: Client, keys: KeyService, ws: Path, listen: int) -> None:
    """Deploy to every site, predict at hospital-a, canary v2 at hospital-b, roll back."""
    import numpy as np

    console.rule("serving: predictions where the data is")
    ops, app = f"spiffe://{TRUST_DOMAIN}/user/site-ops", f"spiffe://{TRUST_DOMAIN}/user/ehr-app"
    for site in SITES:
        admin.grant_role(ops, "site_admin", site=site)
    admin.grant_role(app, "inference_client")
    _issue_user(keys, "site-ops", ws / "site-ops")
    _issue_user(keys, "ehr-app", ws / "ehr-app")
    ops_c = Client(
        f"127.0.0.1:{listen}",
        ws / "site-ops" / "cert.pem",
        ws / "site-ops" / "key.pem",
        ws / "site-ops" / "ca.pem",
        server_name=f"coordinator.{TRUST_DOMAIN}",
        timeout=60,
    )
    for site in SITES:
        st = ops_c.deploy_model("bcw-mlp", "v1", site)
        console.print(
            f"[green]✓[/green] {site}: verified the Vault signature with its pinned "
            f"key and serves bcw-mlp v{st.serving_version}"
        )
    engineer.grant_model("bcw-mlp", app)
    rows = site_frames(SITES, seed=0)["hospital-a"].drop(columns=["target"]).to_numpy(np.float32)
    with _site_client(ws, "ehr-app", "hospital-a") as hospital_app:
        _wait(
            lambda: hospital_app.predict("bcw-mlp", {"features": rows[:1]}) is not None,
            30,
            "predict access to reach the site",
        )
        latencies = []
        for i in range(200):
            t0 = time.perf_counter()
            hospital_app.predict("bcw-mlp", {"features": rows[i % len(rows) :][:1]})
            latencies.append((time.perf_counter() - t0) * 1000)
        batch = hospital_app.predict("bcw-mlp", {"features": rows[:64]})
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    console.print(
        f"hospital-a Predict over mTLS, 200 calls: p50 {p50:.2f} ms  p90 {p90:.2f} ms  "
        f"p99 {p99:.2f} ms; a 64-row batch answered by v{batch.version}"
    )
    job = engineer.submit_job(
        DEMO_APP, {s: "bcw" for s in SITES}, rounds=2, model_name="bcw-mlp", run_config={"seed": 1}
    )
    v2 = list(engineer.watch_job(job.job_id, timeout=600))[-1].snapshot
    st = ops_c.deploy_model("bcw-mlp", v2.model_version, "hospital-b", canary_percent=10)
    console.print(
        f"hospital-b canary: serving v{st.serving_version}, canary "
        f"v{st.canary_version} to {st.canary_percent:.0f}% of callers (sticky)"
    )
    st = ops_c.rollback_model("bcw-mlp", "hospital-b")
    console.print(
        f"hospital-b rollback: serving v{st.serving_version}, canary "
        f"{'none' if not st.canary_version else st.canary_version}"
    )
    ops_c.close()


def _verify_logs(ws: Path, keys: dict[str, bytes]) -> bool:
    """Offline: each log's latest signed checkpoint, then `insitu-audit verify`."""
    import base64

    console.rule("audit: offline verification of every log")
    logs = {
        "coordinator": (
            ws / "coordinator" / "data" / "audit.db",
            "insitu-audit",
            keys["coordinator"],
        )
    }
    for site in SITES:
        sdir = ws / "sites" / site
        from insitu.audit.signing import LocalSigner

        logs[site] = (
            sdir / "audit.db",
            "insitu-site-audit",
            LocalSigner.from_file(sdir / "audit-signing.key").public_key,
        )
    ok = True
    for name, (db, key_name, pub) in logs.items():
        cp = db.with_suffix(".checkpoint")
        pubfile = db.with_suffix(".pub")
        pubfile.write_text(base64.b64encode(pub).decode() + "\n")
        r = subprocess.run(
            [_bin("insitu-audit"), "checkpoint", "--db", str(db)],
            capture_output=True,
            text=True,
            check=False,
        )
        cp.write_text(r.stdout)
        v = subprocess.run(
            [
                _bin("insitu-audit"),
                "verify",
                "--db",
                str(db),
                "--checkpoint",
                str(cp),
                "--pubkey",
                str(pubfile),
                "--key-name",
                key_name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        line = (
            (v.stdout.strip() or v.stderr.strip()).splitlines()[-1]
            if (v.stdout or v.stderr)
            else "no output"
        )
        mark = "[green]✓[/green]" if v.returncode == 0 else "[red]✗[/red]"
        console.print(f"{mark} {name:12s} {line}")
        ok = ok and v.returncode == 0
    return ok


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


class _Processes:
    """Children in their own sessions, so Ctrl-C reaches only us and we stop them in order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: S110 - not up yet; keep polling until the deadline
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def run_demo(workspace: Path | None = None) -> int:
    ws = workspace or Path(tempfile.mkdtemp(prefix="insitu-demo-"))
    ws.mkdir(parents=True, exist_ok=True)
    logs = ws / "logs"
    logs.mkdir(exist_ok=True)
    procs = _Processes(logs)
    vault = DevVault(log_path=logs / "openbao.log")
    interrupted = False
    stopped = False
    stopped = False

    def on_sigterm(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    console.rule("[bold]insitu demo[/bold]")
    console.print(f"workspace: {ws}")
    try:
        with console.status("starting OpenBao (Vault API) on 127.0.0.1 …"):
            vault.start()
            client = hvac.Client(url=vault.address, token=vault.root_token, timeout=10)
            bootstrap_federation(client, TRUST_DOMAIN)
            role_id, secret_id = approle_credentials(client)
            keys = KeyService(client)
        console.print(
            f"[green]✓[/green] OpenBao at {vault.address}: PKI (root + intermediate, "
            "roles site/user/service), transit, KV, AppRole"
        )

        cdir = ws / "coordinator"
        cdir.mkdir(mode=0o700, exist_ok=True)
        write_private_file(cdir / "role-id", role_id.encode())
        write_private_file(cdir / "secret-id", secret_id.encode())
        listen, enrol = free_port(), free_port()
        (cdir / "coordinator.toml").write_text(
            "[coordinator]\n"
            f'trust_domain = "{TRUST_DOMAIN}"\n'
            f'data_dir = "{cdir / "data"}"\n'
            f'vault_addr = "{vault.address}"\n'
            f'vault_role_id_file = "{cdir / "role-id"}"\n'
            f'vault_secret_id_file = "{cdir / "secret-id"}"\n'
            f'listen = "127.0.0.1:{listen}"\n'
            f'enrol_listen = "127.0.0.1:{enrol}"\n'
            "heartbeat_interval_ms = 1000\n"
        )
        with console.status("starting insitu-coordinator (AppRole login, service cert) …"):
            procs.start(
                "coordinator",
                [_bin("insitu-coordinator"), "serve", "--config", str(cdir / "coordinator.toml")],
            )
            _wait(lambda: (cdir / "data" / "endpoints.json").exists(), 60, "coordinator")
        console.print(
            f"[green]✓[/green] coordinator: mTLS 127.0.0.1:{listen}, "
            f"enrolment (token + server TLS) 127.0.0.1:{enrol}"
        )

        admin_dir = ws / "admin"
        bootstrap_admin(keys, TRUST_DOMAIN, "admin", admin_dir)
        console.print(
            "[green]✓[/green] federation_admin identity "
            f"spiffe://{TRUST_DOMAIN}/user/admin issued from Vault"
        )
        ca_file = admin_dir / "ca.pem"
        admin = Client(
            f"127.0.0.1:{listen}",
            admin_dir / "cert.pem",
            admin_dir / "key.pem",
            ca_file,
            server_name=f"coordinator.{TRUST_DOMAIN}",
        )
        _wait(lambda: admin.health() == "SERVING", 30, "coordinator health")

        csvs = write_site_csvs(ws / "site-data", SITES, seed=0)
        app_hash = code_hash(pack_app(app_from_module(DEMO_APP)))
        for site in SITES:
            token = admin.create_join_token(site, 600)
            site_dir = ws / "sites" / site
            r = subprocess.run(
                [
                    _bin("insitu-site"),
                    "enrol",
                    "--coordinator",
                    f"127.0.0.1:{listen}",
                    "--enrol-address",
                    f"127.0.0.1:{enrol}",
                    "--ca-file",
                    str(ca_file),
                    "--site-dir",
                    str(site_dir),
                    "--site-id",
                    site,
                    "--trust-domain",
                    TRUST_DOMAIN,
                ],
                env={**os.environ, "INSITU_JOIN_TOKEN": token.token},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if r.returncode != 0:
                console.print(f"[red]enrolment of {site} failed:[/red] {r.stderr.strip()}")
                return 1
            console.print(
                f"[green]✓[/green] {site} enrolled with one-time token "
                f"{token.token_id} (key generated on site, mode 0600)"
            )
            (site_dir / "datasets.toml").write_text(
                f'[datasets.bcw]\npath = "{csvs[site]}"\nformat = "csv"\nlabel = "target"\n'
                'purposes = ["research"]\nepsilon_budget = 10.0\n'
            )
            # The site_admin reviews the app (hash, components, metric keys, resources)
            # and approves it with the real CLI: audited, naming the approver.
            r = subprocess.run(
                [_bin("insitu-site"), "approve", "--site-dir", str(site_dir),
                 "--app-dir", str(app_from_module(DEMO_APP)), "--by", f"site-admin@{site}",
                 "--note", "breast-cancer demo app, reviewed"],
                capture_output=True, text=True, timeout=120, check=False,
            )
            if r.returncode != 0:
                console.print(f"[red]approval at {site} failed:[/red] {r.stderr.strip()}")
                return 1
            procs.start(
                site,
                [_bin("insitu-site"), "run", "--site-dir", str(site_dir), "--heartbeat-ms", "1000"],
            )

        with console.status("waiting for the three sites to dial in …"):
            _wait(
                lambda: sum(s.connected for s in admin.list_sites()) == len(SITES),
                60,
                "sites to connect",
            )
        table = Table(title="federation demo.insitu", show_lines=False)
        for col in ("site", "SPIFFE id", "status", "session", "cert serial", "expires in"):
            table.add_column(col)
        now = time.time()
        for s in admin.list_sites():
            table.add_row(
                s.site_id,
                s.spiffe_id,
                s.status,
                "[green]connected[/green]" if s.connected else "[red]down[/red]",
                s.cert_serial_hex[:16] + "…",
                f"{(s.cert_not_after_unix - now) / 3600:.1f} h",
            )
        console.print(table)
        console.print(
            f"each site approved app code sha256 {app_hash[:16]}… and holds its own "
            "CSV; rows never leave the site"
        )

        eve = f"spiffe://{TRUST_DOMAIN}/user/eve"
        admin.grant_role(eve, "ml_engineer", org="demo-hospitals")
        eve_dir = ws / "eve"
        _issue_user(keys, "eve", eve_dir)
        console.print("[green]✓[/green] ml_engineer identity spiffe://demo.insitu/user/eve")
        engineer = Client(
            f"127.0.0.1:{listen}",
            eve_dir / "cert.pem",
            eve_dir / "key.pem",
            eve_dir / "ca.pem",
            server_name=f"coordinator.{TRUST_DOMAIN}",
            timeout=60,
        )
        console.rule("federated training: data stays, the model moves")
        job = engineer.submit_job(
            DEMO_APP,
            {s: "bcw" for s in SITES},
            rounds=ROUNDS,
            model_name="bcw-mlp",
            purpose="research",
        )
        final = follow_job(engineer, job.job_id, ROUNDS, console)
        outcome = job_outcome(final)
        if final.state != jobs_pb2.JOB_STATE_SUCCEEDED:
            console.print("[red]" + "\n".join(outcome) + "[/red]")
            return 1
        console.print(f"[green]✓[/green] {outcome[0]}")
        fed_acc = _final_accuracy(final)
        with console.status("training the central baseline on the pooled data (demo only) …"):
            central = central_baseline(seed=0)
        model = engineer.get_model(
            "bcw-mlp", final.model_version, signing_key=keys.public_key("model-signing")
        )
        gap = abs(central - fed_acc) * 100
        verdict = "[green]within 3 points[/green]" if gap <= 3 else "[red]more than 3 points[/red]"
        console.print(
            f"federated accuracy {fed_acc:.4f}   central baseline {central:.4f}   "
            f"gap {gap:.2f} points: {verdict}"
        )
        console.print(
            f"[green]✓[/green] model bcw-mlp {model.version}: signature verified "
            f"(Vault transit model-signing), {len(model.onnx)} bytes of ONNX, lineage "
            f"sites {', '.join(model.manifest['lineage']['sites'])}"
        )
        _serve(admin, engineer, keys, ws, listen)
        engineer.close()
        admin.close()
        audit_keys = {"coordinator": keys.public_key("audit-signing")}
        stopped = True
        with console.status("stopping sites, coordinator and OpenBao …"):
            procs.stop_all()
            vault.stop()
        console.print("[green]✓[/green] all processes stopped (final audit checkpoints signed)")
        ok = _verify_logs(ws, audit_keys)
        console.print(
            "[bold green]demo complete[/bold green]"
            if ok and gap <= 3
            else "[bold red]demo finished with failures[/bold red]"
        )
        return 0 if ok and gap <= 3 else 1
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted; shutting down[/yellow]")
        return 130
    except Exception as e:
        console.print(f"[red]demo failed:[/red] {type(e).__name__}: {e}")
        console.print(f"logs are in {logs}")
        return 1
    finally:
        if not stopped:
            with console.status("stopping sites, coordinator and OpenBao …"):
                procs.stop_all()
                vault.stop()
            console.print("[green]✓[/green] all processes stopped")
        if workspace is None and not interrupted:
            shutil.rmtree(ws, ignore_errors=True)
