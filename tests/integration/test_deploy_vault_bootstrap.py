"""deploy/vault/bootstrap.sh and deploy/compose/init-vault.sh against real OpenBao servers.

bootstrap.sh runs with the ``bao`` CLI on a fresh dev server; the state it leaves must equal
what insitu.keys.bootstrap (the Python twin, on the session's server) leaves, and what the
code needs: an AppRole the coordinator logs in with and signs CSRs through. init-vault.sh
(the compose demo's vault-init) runs against a *production-mode* server (Raft storage, the
shipped openbao.hcl), initialises it, unseals it again after a restart, and bootstraps it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from insitu.identity.credentials import build_csr, generate_private_key
from insitu.identity.spiffe import SpiffeId
from insitu.keys import DevVault, FederationPki, KeyService
from insitu.keys.devserver import find_bao_binary, free_port

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "deploy" / "vault" / "bootstrap.sh"
INIT_VAULT = REPO / "deploy" / "compose" / "init-vault.sh"


def _env(address: str, **extra: str) -> dict[str, str]:
    bao_dir = str(find_bao_binary().parent)
    return {
        "PATH": f"{bao_dir}:{os.defpath}",
        "HOME": "/nonexistent",
        "VAULT_ADDR": address,
        **extra,
    }


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def scripted(
    tmp_path_factory: pytest.TempPathFactory, trust_domain: str
) -> Iterator[dict[str, Any]]:
    """A fresh dev server bootstrapped by bootstrap.sh (twice)."""
    work = tmp_path_factory.mktemp("bootstrap-sh")
    with DevVault() as vault:
        token_file = work / "admin-token"
        token_file.write_text(vault.root_token + "\n")
        token_file.chmod(0o600)
        env = _env(vault.address, VAULT_TOKEN_FILE=str(token_file))
        argv = ["bash", str(BOOTSTRAP), "--trust-domain", trust_domain]
        first = _run([*argv, "--out", str(work / "out"), "--approle-to-kv"], env)
        client = hvac.Client(url=vault.address, token=vault.root_token, timeout=10)
        root_before = client.read("pki/cert/ca")["data"]["certificate"]
        second = _run(argv, env)
        yield {
            "vault": vault,
            "client": client,
            "out": work / "out",
            "first": first,
            "second": second,
            "root_before": root_before,
        }


def _role(client: hvac.Client, name: str) -> dict[str, Any]:
    data: dict[str, Any] = client.read(f"pki_int/roles/{name}")["data"]
    return data


def test_script_state_equals_the_python_bootstrap(
    scripted: dict[str, Any], vault_client: hvac.Client, federation: FederationPki
) -> None:
    mine: hvac.Client = scripted["client"]
    for role in ("site", "user", "service"):
        assert _role(mine, role) == _role(vault_client, role), role
    for mount in ("pki", "pki_int"):
        assert (
            mine.read(f"{mount}/config/crl")["data"]
            == vault_client.read(f"{mount}/config/crl")["data"]
        )
    mounts_mine = mine.sys.list_mounted_secrets_engines()["data"]
    mounts_ref = vault_client.sys.list_mounted_secrets_engines()["data"]
    for path in ("pki/", "pki_int/", "transit/", "kv/"):
        assert mounts_mine[path]["type"] == mounts_ref[path]["type"], path
        assert (
            mounts_mine[path]["config"]["max_lease_ttl"]
            == mounts_ref[path]["config"]["max_lease_ttl"]
        )
        assert (mounts_mine[path].get("options") or {}).get("version") == (
            mounts_ref[path].get("options") or {}
        ).get("version"), path
    for key in ("audit-signing", "model-signing", "data-wrapping", "pseudonym"):
        a, b = (
            mine.read(f"transit/keys/{key}")["data"],
            vault_client.read(f"transit/keys/{key}")["data"],
        )
        assert (a["type"], a["exportable"]) == (b["type"], b["exportable"]), key
    fields = ("token_policies", "token_ttl", "token_max_ttl", "secret_id_ttl", "bind_secret_id")
    role_mine = mine.read("auth/approle/role/coordinator")["data"]
    role_ref = vault_client.read("auth/approle/role/coordinator")["data"]
    assert {f: role_mine[f] for f in fields} == {f: role_ref[f] for f in fields}
    for policy in ("insitu-coordinator",):
        assert (
            mine.sys.read_acl_policy(policy)["data"]["policy"]
            == (vault_client.sys.read_acl_policy(policy)["data"]["policy"])
        )


def test_script_builds_the_same_ca_hierarchy(scripted: dict[str, Any], trust_domain: str) -> None:
    mine: hvac.Client = scripted["client"]
    root = x509.load_pem_x509_certificate(mine.read("pki/cert/ca")["data"]["certificate"].encode())
    inter = x509.load_pem_x509_certificate(
        mine.read("pki_int/cert/ca")["data"]["certificate"].encode()
    )
    assert root.subject.rfc4514_string() == f"CN=insitu {trust_domain} root CA"
    assert inter.subject.rfc4514_string() == f"CN=insitu {trust_domain} intermediate CA"
    assert inter.issuer == root.subject
    inter.verify_directly_issued_by(root)
    root_key, inter_key = root.public_key(), inter.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey) and root_key.key_size == 384
    assert isinstance(inter_key, ec.EllipticCurvePublicKey) and inter_key.key_size == 256


def test_second_run_changes_nothing_that_matters(scripted: dict[str, Any]) -> None:
    assert "generate the root CA" in scripted["first"].stderr
    assert "generate" not in scripted["second"].stderr
    assert "create transit key" not in scripted["second"].stderr
    assert scripted["client"].read("pki/cert/ca")["data"]["certificate"] == scripted["root_before"]


def test_coordinator_runs_on_what_the_script_writes(
    scripted: dict[str, Any], trust_domain: str
) -> None:
    out: Path = scripted["out"]
    for name in ("role-id", "secret-id"):
        assert (out / name).stat().st_mode & 0o077 == 0, f"{name} must be 0600"
    keys = KeyService.from_approle(
        scripted["vault"].address,
        (out / "role-id").read_text().strip(),
        (out / "secret-id").read_text().strip(),
    )
    assert (out / "ca.pem").read_text().strip() == keys.ca_bundle_pem().strip()
    sid = SpiffeId.site(trust_domain, "hospital-z")
    cert = keys.sign_csr(
        "site", build_csr(generate_private_key(), sid), uri_sans=[sid.uri], ttl_seconds=600
    )
    assert cert.cert_pem.startswith("-----BEGIN CERTIFICATE-----")


def _token(client: hvac.Client, address: str, policy: str) -> hvac.Client:
    reply = client.auth.token.create(policies=[policy], no_default_policy=True, ttl="10m")
    return hvac.Client(url=address, token=reply["auth"]["client_token"], timeout=10)


def test_vault_agent_templates_read_what_their_policy_allows(scripted: dict[str, Any]) -> None:
    """Every path a k8s Vault Agent template reads is readable with the policy that
    bootstrap.sh binds to that pod's Kubernetes auth role (insitu-<role>)."""
    client: hvac.Client = scripted["client"]
    address = scripted["vault"].address
    checked = 0
    for manifest in (REPO / "deploy" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not doc or doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            ann = doc["spec"]["template"]["metadata"]["annotations"]
            token = _token(client, address, ann["vault.hashicorp.com/role"])
            for key, value in ann.items():
                if key.startswith("vault.hashicorp.com/agent-inject-template-"):
                    for path in re.findall(r'secret "([^"]+)"', value):
                        assert token.read(path) is not None, f"{manifest.name}: {path}"
                        checked += 1
    assert checked >= 4
    approle = _token(client, address, "insitu-coordinator").read(
        "kv/data/insitu/coordinator/approle"
    )
    assert approle["data"]["data"]["role_id"] == (scripted["out"] / "role-id").read_text().strip()


# ------------------------------------------------------------------ init-vault.sh


class _ProdServer:
    """``bao server`` with the compose demo's openbao.hcl, rewritten to loopback paths."""

    def __init__(self, work: Path) -> None:
        self.port, cluster = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        (work / "data").mkdir()
        text = (REPO / "deploy" / "compose" / "openbao.hcl").read_text()
        for old, new in {
            "0.0.0.0:8200": f"127.0.0.1:{self.port}",
            "http://openbao:8200": self.address,
            "http://openbao:8201": f"http://127.0.0.1:{cluster}",
            "/openbao/file": str(work / "data"),
        }.items():
            assert old in text, old
            text = text.replace(old, new)
        self.config = work / "openbao.hcl"
        self.config.write_text(text)
        self.log = work / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(find_bao_binary()), "server", f"-config={self.config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": os.defpath, "HOME": str(self.config.parent)},
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            self.proc = None


def _sealed(address: str) -> bool:
    status: bool = hvac.Client(url=address, timeout=5).sys.read_seal_status()["sealed"]
    return status


def test_init_vault_initialises_unseals_and_bootstraps_a_real_server(tmp_path: Path) -> None:
    server = _ProdServer(tmp_path)
    env = _env(
        server.address,
        TRUST_DOMAIN="compose.insitu",
        BAO_INIT_DIR=str(tmp_path / "bao-init"),
        COORDINATOR_VAULT_DIR=str(tmp_path / "coordinator-vault"),
    )
    server.start()
    try:
        first = _run(["bash", str(INIT_VAULT)], env)
        assert "initialising OpenBao" in first.stderr
        creds = tmp_path / "coordinator-vault"
        keys = KeyService.from_approle(
            server.address,
            (creds / "role-id").read_text().strip(),
            (creds / "secret-id").read_text().strip(),
        )
        assert keys.public_key("audit-signing")
        # A restart seals the server; the next `compose up` unseals it and changes nothing.
        server.stop()
        server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _sealed(server.address)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        second = _run(["bash", str(INIT_VAULT)], env)
        assert "unsealing" in second.stderr and "initialising" not in second.stderr
        assert not _sealed(server.address)
        for name in ("root-token", "unseal-key"):
            assert (tmp_path / "bao-init" / name).stat().st_mode & 0o077 == 0
    finally:
        server.stop()
