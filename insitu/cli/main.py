"""`insitu`: the operator's command line (dev Vault, tokens, sites, bootstrap, demo)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Annotated

import hvac
import typer
from rich.console import Console
from rich.table import Table

from insitu.cli.common import cli_errors, connect, parse_duration
from insitu.errors import ErrorCode, InsituError
from insitu.identity.admin_bootstrap import bootstrap_admin
from insitu.identity.credentials import write_private_file
from insitu.keys import DevVault, KeyService, approle_credentials, bootstrap_federation

app = typer.Typer(
    help="insitu: federated learning where the data stays in situ.", no_args_is_help=True
)
token_app = typer.Typer(help="One-time join tokens.", no_args_is_help=True)
site_app = typer.Typer(help="The site registry.", no_args_is_help=True)
admin_app = typer.Typer(help="Federation administration.", no_args_is_help=True)
dev_app = typer.Typer(help="Development helpers (never for production).", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(site_app, name="site")
app.add_typer(admin_app, name="admin")
app.add_typer(dev_app, name="dev")
role_app = typer.Typer(help="Role bindings (who holds which role, where).", no_args_is_help=True)
policy_app = typer.Typer(help="Cedar RBAC policies.", no_args_is_help=True)
job_app = typer.Typer(help="Federated jobs.", no_args_is_help=True)
model_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(role_app, name="role")
app.add_typer(policy_app, name="policy")
app.add_typer(job_app, name="job")
app.add_typer(model_app, name="model")
console = Console()

Coordinator = Annotated[str | None, typer.Option(help="coordinator mTLS address HOST:PORT")]
Identity = Annotated[Path | None, typer.Option(help="folder with cert.pem, key.pem, ca.pem")]
TrustDomain = Annotated[str | None, typer.Option(help="federation trust domain")]
Config = Annotated[Path | None, typer.Option(help="client settings TOML ([client] table)")]


@token_app.command("create")
@cli_errors
def token_create(
    site: Annotated[str, typer.Option(help="site id the token is bound to")],
    ttl: Annotated[str, typer.Option(help="lifetime, e.g. 1h")] = "1h",
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Mint a one-time join token for SITE (printed once; only its hash is stored)."""
    seconds = parse_duration(ttl)
    with connect(coordinator, identity, trust_domain, config) as c:
        t = c.create_join_token(site, seconds)
    console.print(
        f"[dim]token id {t.token_id} for site {t.site_id}, expires {t.expires_unix}[/dim]",
        highlight=False,
    )
    print(t.token)


@site_app.command("list")
@cli_errors
def site_list(
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """List enrolled sites and whether each is connected."""
    with connect(coordinator, identity, trust_domain, config) as c:
        sites = c.list_sites()
    table = Table("site", "status", "connected", "cert serial", "cert expires (unix)")
    for s in sites:
        table.add_row(
            s.site_id,
            s.status,
            "yes" if s.connected else "no",
            s.cert_serial_hex,
            str(s.cert_not_after_unix),
        )
    console.print(table)


@site_app.command("revoke")
@cli_errors
def site_revoke(
    site_id: str,
    reason: Annotated[str, typer.Option()] = "",
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Revoke every certificate of SITE_ID in Vault and end its sessions."""
    with connect(coordinator, identity, trust_domain, config) as c:
        site, n = c.revoke_site(site_id, reason)
    console.print(f"site {site.site_id} is {site.status}; {n} certificate(s) revoked")


@admin_app.command("bootstrap")
@cli_errors
def admin_bootstrap(
    out: Annotated[Path, typer.Option(help="folder to write the admin identity to")],
    vault_addr: Annotated[str, typer.Option(envvar="VAULT_ADDR")],
    vault_token_file: Annotated[Path, typer.Option(help="file holding a privileged Vault token")],
    trust_domain: Annotated[str, typer.Option()] = "demo.insitu",
    user: Annotated[str, typer.Option()] = "admin",
    ttl: Annotated[str, typer.Option()] = "8h",
) -> None:
    """Issue the first federation_admin identity straight from Vault."""
    keys = KeyService.from_token(vault_addr, vault_token_file.read_text().strip())
    creds = bootstrap_admin(keys, trust_domain, user, out, parse_duration(ttl))
    console.print(f"federation_admin identity {creds.info.spiffe_id} written to {out}")


@dev_app.command("vault")
@cli_errors
def dev_vault(
    out: Annotated[Path, typer.Option(help="folder for address, token and AppRole files")],
    trust_domain: Annotated[str, typer.Option()] = "demo.insitu",
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 0,
) -> None:
    """Run an OpenBao dev server on 127.0.0.1, bootstrapped for insitu, until Ctrl-C."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    vault = DevVault(port=port or None, log_path=out / "bao.log").start()
    try:
        client = hvac.Client(url=vault.address, token=vault.root_token, timeout=10)
        bootstrap_federation(client, trust_domain)
        role_id, secret_id = approle_credentials(client)
        keys = KeyService(client)
        (out / "vault-addr").write_text(vault.address + "\n")
        write_private_file(out / "root-token", vault.root_token.encode())
        write_private_file(out / "role-id", role_id.encode())
        write_private_file(out / "secret-id", secret_id.encode())
        (out / "ca.pem").write_text(keys.ca_bundle_pem())
        console.print(f"OpenBao dev server at {vault.address}; credentials in {out} (0600)")
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    finally:
        vault.stop()


@app.command("demo")
@cli_errors
def demo(
    workspace: Annotated[Path | None, typer.Option(help="keep files here (default: temp)")] = None,
) -> None:
    """Run the end-to-end federation demo on embedded defaults."""
    from insitu.demo import run_demo

    rc = run_demo(workspace)
    if rc != 0:
        raise InsituError(ErrorCode.FAILED_PRECONDITION, "demo failed")


@role_app.command("grant")
@cli_errors
def role_grant(
    principal: Annotated[str, typer.Argument(help="SPIFFE id, e.g. spiffe://demo.insitu/user/eve")],
    role: Annotated[str, typer.Argument(help="federation_admin, site_admin, ml_engineer, ...")],
    site: Annotated[str, typer.Option(help="site scope (site_admin, data_steward)")] = "",
    org: Annotated[str, typer.Option(help="org scope (ml_engineer)")] = "",
    valid_for: Annotated[str | None, typer.Option(help="e.g. 30d; default unbounded")] = None,
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Grant ROLE to PRINCIPAL (audited; nobody may grant themselves)."""
    import time as _time

    not_after = int(_time.time()) + parse_duration(valid_for) if valid_for else 0
    with connect(coordinator, identity, trust_domain, config) as c:
        b = c.grant_role(principal, role, site=site, org=org, not_after=not_after)
    console.print(
        f"granted {b.role} to {b.principal}"
        + (f" at {b.site}" if b.site else "")
        + (f" in {b.org}" if b.org else "")
    )


@role_app.command("revoke")
@cli_errors
def role_revoke(
    principal: str,
    role: str,
    site: Annotated[str, typer.Option()] = "",
    org: Annotated[str, typer.Option()] = "",
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Remove one role binding."""
    with connect(coordinator, identity, trust_domain, config) as c:
        c.revoke_role(principal, role, site=site, org=org)
    console.print(f"revoked {role} from {principal}")


@role_app.command("list")
@cli_errors
def role_list(
    principal: Annotated[str, typer.Option(help="only this SPIFFE id")] = "",
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """List role bindings."""
    with connect(coordinator, identity, trust_domain, config) as c:
        rows = c.list_roles(principal)
    table = Table("principal", "role", "site", "org", "not after", "granted by")
    for b in rows:
        table.add_row(
            b.principal, b.role, b.site, b.org, str(b.not_after_unix or "-"), b.granted_by
        )
    console.print(table)


@policy_app.command("check")
@cli_errors
def policy_check(
    directory: Annotated[Path, typer.Argument(help="policy folder (schema + *.cedar)")] = Path(
        "policies/rbac"
    ),
    local_dir: Annotated[
        Path | None, typer.Option(help="a site's local (forbid-only) policies")
    ] = None,
    tests_dir: Annotated[
        Path | None, typer.Option(help="policy test table (default: DIR/tests)")
    ] = None,
) -> None:
    """Validate the policies against the schema and run the policy test table."""
    from insitu.authz import check_policies

    report = check_policies(directory, local_dir, tests_dir)
    if report.error:
        raise InsituError(ErrorCode.POLICY_INVALID, report.error)
    for f in report.failures:
        console.print(f"[red]FAIL[/red] {f}")
    console.print(
        f"policy set {report.policy_hash[:16]}…: {report.cases} cases, "
        f"{len(report.failures)} failed"
    )
    if report.failures:
        raise typer.Exit(1)


@policy_app.command("reload")
@cli_errors
def policy_reload(
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Ask the coordinator to re-read its policies (atomic; a bad set is refused)."""
    with connect(coordinator, identity, trust_domain, config) as c:
        old, new = c.reload_policy()
    console.print(f"policy hash {old[:16]}… → {new[:16]}…")


@job_app.command("submit")
@cli_errors
def job_submit(
    app_ref: Annotated[str, typer.Argument(help="module path or Flower app folder")],
    site: Annotated[list[str], typer.Option(help="SITE=DATASET, repeatable")],
    rounds: Annotated[int, typer.Option()] = 5,
    strategy: Annotated[str, typer.Option()] = "fedavg",
    min_sites: Annotated[int | None, typer.Option()] = None,
    round_timeout: Annotated[str, typer.Option()] = "10m",
    model_name: Annotated[str, typer.Option()] = "model",
    purpose: Annotated[str, typer.Option()] = "research",
    dp_noise_multiplier: Annotated[float, typer.Option()] = 0.0,
    dp_epsilon: Annotated[float, typer.Option()] = 0.0,
    config_kv: Annotated[list[str] | None, typer.Option("--config-kv", help="KEY=VALUE")] = None,
    watch: Annotated[bool, typer.Option(help="follow the rounds")] = True,
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Submit a Flower app as a federated job (sites approve its code hash first)."""
    targets = dict(_kv(x, "--site") for x in site)
    run_config = dict(_kv(x, "--config-kv") for x in (config_kv or []))
    with connect(coordinator, identity, trust_domain, config) as c:
        job = c.submit_job(
            app_ref,
            targets,
            rounds=rounds,
            strategy=strategy,
            min_sites=min_sites,
            round_timeout_s=parse_duration(round_timeout),
            model_name=model_name,
            purpose=purpose,
            run_config=run_config,
            dp_noise_multiplier=dp_noise_multiplier,
            dp_epsilon=dp_epsilon,
        )
        console.print(f"job {job.job_id} submitted (code sha256 {job.code_sha256[:16]}…)")
        if watch:
            from insitu._proto.v1 import jobs_pb2
            from insitu.cli.progress import follow_job, job_outcome

            final = follow_job(c, job.job_id, rounds, console)
            lines = job_outcome(final)
            if final.state != jobs_pb2.JOB_STATE_SUCCEEDED:
                raise InsituError(ErrorCode.FAILED_PRECONDITION, "\n".join(lines))
            console.print(lines[0])


@job_app.command("list")
@cli_errors
def job_list(
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """The jobs you may see, with their state by name and how far they got."""
    from insitu.cli.progress import state_name

    with connect(coordinator, identity, trust_domain, config) as c:
        jobs = c.list_jobs()
    table = Table("job", "state", "round", "model", "owner", "reason")
    for j in jobs:
        model = f"{j.model_name} {j.model_version}".strip()
        reason = j.error.splitlines()[0][:80] if j.error else ""
        table.add_row(j.job_id, state_name(j.state), f"{j.current_round}/{j.rounds}", model,
                      j.owner, reason)
    console.print(table)


@job_app.command("cancel")
@cli_errors
def job_cancel(
    job_id: Annotated[str, typer.Argument()],
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Stop a job of yours that has not finished (its ServerApp is stopped; audited)."""
    with connect(coordinator, identity, trust_domain, config) as c:
        job = c.cancel_job(job_id)
    console.print(f"job {job.job_id}: cancel requested")


@job_app.command("show")
@cli_errors
def job_show(
    job_id: Annotated[str, typer.Argument()],
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """One job: its rounds (with each failed site and the rule it broke) and its outcome."""
    from insitu.cli.progress import job_outcome

    with connect(coordinator, identity, trust_domain, config) as c:
        job = c.get_job(job_id)
    for r in job.history:
        why = f"  failed: {'; '.join(r.site_errors or r.sites_failed)}" if r.sites_failed else ""
        console.print(f"round {r.round} {r.phase:8s} sites {len(r.sites_ok)}{why}")
    for line in job_outcome(job):
        console.print(line)


@job_app.command("logs")
@cli_errors
def job_logs(
    job_id: Annotated[str, typer.Argument()],
    tail: Annotated[int, typer.Option(help="only the last N bytes (0: all, up to 16 MiB)")] = 0,
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """The job's ServerApp output (stdout and stderr of its sandboxed process)."""
    import sys

    if tail < 0:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "--tail must be >= 0")
    with connect(coordinator, identity, trust_domain, config) as c:
        logs = c.job_logs(job_id, tail_bytes=tail)
    sys.stdout.buffer.write(logs.data)
    sys.stdout.flush()
    if logs.truncated:
        console.print("(earlier output omitted; the log is longer)", style="dim")


def _kv(text: str, flag: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k or not v:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, f"{flag} takes KEY=VALUE, not {text!r}")
    return k, v


@model_app.command("list")
@cli_errors
def model_list(
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Models you may read, with their lineage."""
    with connect(coordinator, identity, trust_domain, config) as c:
        models = c.list_models()
    table = Table("name", "version", "job", "sites", "rounds", "metrics")
    for m in models:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(m.lineage.metrics.items()))
        table.add_row(
            m.name,
            m.version,
            m.lineage.job_id,
            ",".join(m.lineage.sites),
            str(m.lineage.rounds),
            metrics,
        )
    console.print(table)


def _percent(text: str) -> float:
    value = text.strip().rstrip("%")
    try:
        pct = float(value)
    except ValueError:
        raise InsituError(
            ErrorCode.INVALID_ARGUMENT, f"--canary takes a percentage, not {text!r}"
        ) from None
    if not 0 < pct < 100:
        raise InsituError(ErrorCode.INVALID_ARGUMENT, "--canary must be between 0% and 100%")
    return pct


@model_app.command("deploy")
@cli_errors
def model_deploy(
    model: Annotated[str, typer.Argument(help="registry model name")],
    version: Annotated[str, typer.Option(help="registry version, e.g. v3")],
    site: Annotated[str, typer.Option(help="site that serves it")],
    canary: Annotated[
        str | None, typer.Option(help="route this share of callers, e.g. 10%")
    ] = None,
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Have SITE fetch, verify (Vault signature) and serve or canary a model version."""
    pct = _percent(canary) if canary is not None else 0.0
    with connect(coordinator, identity, trust_domain, config) as c:
        st = c.deploy_model(model, version, site, canary_percent=pct)
    console.print(
        f"{site}: serving v{st.serving_version}"
        + (
            f", canary v{st.canary_version} at {st.canary_percent:.0f}%"
            if st.canary_version
            else ""
        )
    )


@model_app.command("promote")
@cli_errors
def model_promote(
    model: str,
    site: Annotated[str, typer.Option()],
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Make SITE's canary version the serving version."""
    with connect(coordinator, identity, trust_domain, config) as c:
        st = c.promote_model(model, site)
    console.print(f"{site}: serving v{st.serving_version}")


@model_app.command("rollback")
@cli_errors
def model_rollback(
    model: str,
    site: Annotated[str, typer.Option()],
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Withdraw SITE's canary, or go back to the previous serving version."""
    with connect(coordinator, identity, trust_domain, config) as c:
        st = c.rollback_model(model, site)
    console.print(f"{site}: serving v{st.serving_version}")


@model_app.command("grant")
@cli_errors
def model_grant(
    model: str,
    principal: Annotated[str, typer.Option(help="SPIFFE id allowed to predict")],
    coordinator: Coordinator = None,
    identity: Identity = None,
    trust_domain: TrustDomain = None,
    config: Config = None,
) -> None:
    """Allow PRINCIPAL (an inference_client) to call Predict with MODEL at the sites."""
    with connect(coordinator, identity, trust_domain, config) as c:
        c.grant_model(model, principal)
    console.print(f"{principal} may predict with {model}")


def main() -> None:
    app()
