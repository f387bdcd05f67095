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


def main() -> None:
    app()
