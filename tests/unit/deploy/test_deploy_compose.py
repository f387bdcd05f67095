"""deploy/compose: the compose file against the official Compose Specification schema, its
security invariants, its settings file against the real settings loader, and the shipped
Prometheus config (promtool, where installed)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from coordinator.settings import CoordinatorSettings
from insitu.settings import load_settings

COMPOSE_DIR = Path(__file__).resolve().parents[3] / "deploy" / "compose"
SCHEMA = COMPOSE_DIR / "schema" / "compose-spec.json"
INSITU_IMAGE = "insitu:0.1"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _errors(validator: jsonschema.protocols.Validator, doc: object) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_vendored_schema_is_the_recorded_one() -> None:
    recorded = re.search(r"sha256: `([0-9a-f]{64})`", (SCHEMA.parent / "README.md").read_text())
    assert recorded, "schema/README.md must record the vendored file's sha256"
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded.group(1)
    assert json.loads(SCHEMA.read_text())["title"] == "Compose Specification"


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    assert _errors(validator, compose) == []


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d["services"]["coordinator"].update(comand=["x"]), "misspelt key"),
        (
            lambda d: d["services"]["site-a"]["depends_on"]["federation-init"].update(
                condition="service_finished"
            ),
            "unknown depends_on condition",
        ),
        (lambda d: d["services"]["coordinator"].update(cap_drop="ALL"), "string for a list"),
        (lambda d: d.update(servces={}), "unknown top-level key"),
    ],
)
def test_schema_rejects_a_broken_compose_file(
    compose: dict[str, Any],
    validator: jsonschema.protocols.Validator,
    mutate: Callable[[dict[str, Any]], None],
    why: str,
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert _errors(validator, broken), f"schema accepted a {why}"


def test_the_federation_is_all_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["openbao"]["image"].startswith("openbao/openbao:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    sites = [n for n, s in services.items() if s.get("environment", {}).get("SITE_ID")]
    assert sorted(sites) == ["site-a", "site-b"]
    for name in ("coordinator", *sites):
        assert services[name]["image"] == INSITU_IMAGE


def test_insitu_containers_are_hardened(compose: dict[str, Any]) -> None:
    insitu = {n: s for n, s in compose["services"].items() if s.get("image") == INSITU_IMAGE}
    assert len(insitu) >= 5
    for name, svc in insitu.items():
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        uid = str(svc["user"]).split(":")[0]
        assert uid.isdigit() and int(uid) != 0, name
        assert not svc.get("privileged"), name


_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|UNSEAL|ROLE_ID|KEY", re.IGNORECASE)


def test_no_secret_is_written_inline(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key in env:
            if _SECRET_NAME.search(key):
                # Only where a secret lives may be named, never the secret itself.
                assert key.endswith(("_DIR", "_FILE")), f"{name}: {key} looks like a secret"
        for arg in [*svc.get("command", []), *svc.get("entrypoint", [])]:
            assert not re.search(r"--(token|secret|password)\b", str(arg)), f"{name}: {arg}"


def test_each_site_sees_only_its_own_join_token(compose: dict[str, Any]) -> None:
    for site in ("site-a", "site-b"):
        mounts = [m for m in compose["services"][site]["volumes"] if isinstance(m, dict)]
        join = [m for m in mounts if m["source"] == "join"]
        assert len(join) == 1
        assert join[0]["read_only"] is True
        assert join[0]["volume"]["subpath"] == site


def test_coordinator_settings_file_loads_and_matches_the_wiring(
    compose: dict[str, Any],
) -> None:
    s = load_settings(
        CoordinatorSettings, "coordinator", file=COMPOSE_DIR / "coordinator.toml", env={}
    )
    coord = compose["services"]["coordinator"]
    init = compose["services"]["vault-init"]
    # vault-init writes the AppRole files where the coordinator's settings look for them.
    vault_dir = Path(init["environment"]["COORDINATOR_VAULT_DIR"])
    assert s.vault_role_id_file == vault_dir / "role-id"
    assert s.vault_secret_id_file == vault_dir / "secret-id"
    assert f"coordinator-vault:{vault_dir}:ro" in coord["volumes"]
    assert s.vault_token_file is None  # dev-only setting, never in a deployment
    assert s.vault_addr == init["environment"]["VAULT_ADDR"]
    assert s.trust_domain == compose["x-trust-domain"]
    # The published ports are the listeners', and the health check pins the real name.
    ports = {p.split(":")[-1] for p in coord["ports"]}
    assert ports == {s.listen.rsplit(":", 1)[1], s.enrol_listen.rsplit(":", 1)[1]}
    test = coord["healthcheck"]["test"]
    assert test[test.index("--server-name") + 1] == s.server_name
    assert test[test.index("--ca-file") + 1] == str(s.data_dir / "ca.pem")
    # The enrolment port is the mTLS port + 1: what `insitu-site enrol` assumes by default.
    assert int(ports.pop()) - int(ports.pop()) in (1, -1)


def test_commands_are_ones_the_clis_accept(
    compose: dict[str, Any], check_cli: Callable[[Sequence[str]], click.Command]
) -> None:
    checked = 0
    for svc in compose["services"].values():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd and cmd[0].startswith("insitu"):
            check_cli(cmd)
            checked += 1
    assert checked >= 1


def test_entrypoint_scripts_exist_in_the_image_layout(compose: dict[str, Any]) -> None:
    dockerfile = (COMPOSE_DIR.parent / "Dockerfile").read_text()
    assert "COPY deploy/compose/*.sh /opt/insitu/deploy/compose/" in dockerfile
    for svc in compose["services"].values():
        for arg in svc.get("entrypoint", []):
            if arg.startswith("/opt/insitu/deploy/compose/"):
                script = COMPOSE_DIR / Path(arg).name
                assert script.is_file(), arg
                assert os.access(script, os.X_OK), f"{script} is not executable"


def test_config_files_exist(compose: dict[str, Any]) -> None:
    for name, cfg in compose["configs"].items():
        assert (COMPOSE_DIR / cfg["file"]).is_file(), name


def test_prometheus_scrapes_the_federation(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0]
        for job in prom["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert {"coordinator", "site-a", "site-b", "openbao"} <= targets
    assert targets - {"localhost"} <= set(compose["services"])


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)"
)
def test_promtool_accepts_the_prometheus_config() -> None:
    out = subprocess.run(
        ["promtool", "check", "config", str(COMPOSE_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# The job sandbox: bwrap, unprivileged, creates a user namespace and in it mount/pid/net/
# ipc/uts/cgroup namespaces with a fresh /proc. Docker's default seccomp profile, its
# AppArmor profile and its /proc masks each forbid a step; the services that run job code
# in it (the coordinator its ServerApps, the sites their ClientApps), and only they, lift
# them.
_SANDBOX_OPTS = {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}


def _runs_job_code(name: str, svc: dict[str, Any]) -> bool:
    return name == "coordinator" or bool(svc.get("environment", {}).get("SITE_ID"))


def test_the_sandboxing_services_may_build_it_and_nothing_else_may(
    compose: dict[str, Any],
) -> None:
    sandboxed = []
    for name, svc in compose["services"].items():
        opts = set(svc.get("security_opt", []))
        if _runs_job_code(name, svc):
            assert opts >= _SANDBOX_OPTS, name
            # The sandbox costs no privilege: no capability, no escalation, not privileged.
            assert not svc.get("cap_add") and svc["cap_drop"] == ["ALL"], name
            assert "no-new-privileges:true" in opts and not svc.get("privileged"), name
            sandboxed.append(name)
        else:
            assert not opts & _SANDBOX_OPTS, name
    assert sorted(sandboxed) == ["coordinator", "site-a", "site-b"]
