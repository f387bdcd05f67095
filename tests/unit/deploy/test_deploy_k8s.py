"""deploy/k8s: every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict, one pinned version), plus the invariants a reviewer would check by hand: hardened
pods, exec probes, Vault Agent annotations, NetworkPolicies, settings that the real
loaders accept, and commands the real CLIs accept."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from coordinator.settings import CoordinatorSettings
from insitu.settings import load_settings
from site_node.settings import SiteSettings

K8S_DIR = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
# The Kubernetes version the manifests are checked against (the oldest one supported).
K8S_VERSION = "1.33.0"
MANIFESTS = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")

kv = pytest.importorskip(
    "kubernetes_validate.utils",
    reason="kubernetes-validate not installed (pip install 'kubernetes-validate>=1.33')",
)


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


DOCS = _docs()


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _of_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    for d in _of_kind("Deployment") + _of_kind("StatefulSet"):
        yield d["metadata"]["name"], d["spec"]["template"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[n for n, _ in DOCS])
def test_manifest_matches_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kv.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    broken = copy.deepcopy(_one("Deployment", "insitu-coordinator"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_the_required_workloads_exist() -> None:
    assert _one("Deployment", "insitu-coordinator")
    assert _one("Service", "insitu-coordinator")
    assert _one("NetworkPolicy", "insitu-coordinator")
    site = _one("StatefulSet", "insitu-site-a")
    claims = site["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    mounts = {
        m["mountPath"] for m in site["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert "/var/lib/insitu/data" in mounts


@pytest.mark.parametrize("workload", [n for n, _ in _pod_templates()])
def test_pods_are_hardened(workload: str) -> None:
    pod = dict(_pod_templates())[workload]
    psc = pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in _containers(pod):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc["capabilities"].get("add"), c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(
            res["limits"]
        ), c["name"]


@pytest.mark.parametrize("workload", [n for n, _ in _pod_templates()])
def test_probes_are_exec_probes_of_insitu_probe(workload: str) -> None:
    """Our listeners are TLS-only; k8s' grpc: probe is plaintext and would always fail."""
    pod = dict(_pod_templates())[workload]
    main = pod["spec"]["containers"][0]
    for kind in ("livenessProbe", "readinessProbe"):
        probe = main[kind]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket"} == set(), kind
        assert probe["exec"]["command"][0] == "insitu-probe", kind


@pytest.mark.parametrize("workload", [n for n, _ in _pod_templates()])
def test_secrets_come_from_the_vault_agent(workload: str) -> None:
    ann = dict(_pod_templates())[workload]["metadata"]["annotations"]
    assert ann["vault.hashicorp.com/agent-inject"] == "true"
    assert ann["vault.hashicorp.com/role"] in ("insitu-coordinator", "insitu-site")
    secrets = {
        k.removeprefix("vault.hashicorp.com/agent-inject-secret-"): v
        for k, v in ann.items()
        if k.startswith("vault.hashicorp.com/agent-inject-secret-")
    }
    assert secrets
    for name, path in secrets.items():
        template = ann[f"vault.hashicorp.com/agent-inject-template-{name}"]
        # The template reads the same path the annotation declares.
        assert re.findall(r'secret "([^"]+)"', template) == [path], name
    # Nothing secret is written into a manifest: no Secret objects with data.
    assert not [d for d in _of_kind("Secret") if d.get("data") or d.get("stringData")]


def test_coordinator_network_policy_allows_only_listeners_vault_and_dns() -> None:
    np = _one("NetworkPolicy", "insitu-coordinator")["spec"]
    assert np["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "insitu-coordinator"}
    assert sorted(np["policyTypes"]) == ["Egress", "Ingress"]
    ingress_ports = sorted(p["port"] for rule in np["ingress"] for p in rule["ports"])
    assert ingress_ports == [7443, 7444]
    egress = {
        (p["protocol"], p["port"]): rule["to"] for rule in np["egress"] for p in rule["ports"]
    }
    assert set(egress) == {("TCP", 8200), ("UDP", 53), ("TCP", 53)}
    assert all(rule["to"] for rule in np["egress"])  # no rule open to everywhere
    vault_ns = egress[("TCP", 8200)][0]["namespaceSelector"]["matchLabels"]
    assert vault_ns == {"kubernetes.io/metadata.name": "vault"}


def test_site_network_policy_denies_ingress() -> None:
    np = _one("NetworkPolicy", "insitu-site")["spec"]
    assert "Ingress" in np["policyTypes"] and np["ingress"] == []
    ports = sorted({p["port"] for rule in np["egress"] for p in rule["ports"]})
    assert ports == [53, 7443, 7444, 8200]


def _toml(configmap: str, key: str, tmp_path: Path) -> Path:
    path = tmp_path / key
    path.write_text(_one("ConfigMap", configmap)["data"][key])
    return path


def test_coordinator_configmap_is_valid_settings(tmp_path: Path) -> None:
    s = load_settings(
        CoordinatorSettings,
        "coordinator",
        file=_toml("insitu-coordinator-config", "coordinator.toml", tmp_path),
        env={},
    )
    assert s.vault_token_file is None  # dev-only
    agent_files = {
        "/vault/secrets/" + k.removeprefix("vault.hashicorp.com/agent-inject-secret-")
        for k in dict(_pod_templates())["insitu-coordinator"]["metadata"]["annotations"]
        if k.startswith("vault.hashicorp.com/agent-inject-secret-")
    }
    assert {str(s.vault_role_id_file), str(s.vault_secret_id_file)} <= agent_files
    deployment = _one("Deployment", "insitu-coordinator")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = sorted(p["containerPort"] for p in c["ports"])
    assert ports == sorted(int(a.rsplit(":", 1)[1]) for a in (s.listen, s.enrol_listen))
    probe = c["livenessProbe"]["exec"]["command"]
    assert probe[probe.index("--server-name") + 1] == s.server_name
    assert probe[probe.index("--ca-file") + 1] == str(s.data_dir / "ca.pem")
    assert probe[probe.index("--address") + 1].endswith(s.enrol_listen.rsplit(":", 1)[1])
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(s.data_dir) in mounts


def test_site_configmap_is_valid_settings(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "site.toml").write_text(
        _one("ConfigMap", "insitu-site-a-config")["data"]["site.toml"]
    )
    s = load_settings(
        SiteSettings, "site", file=site_dir / "site.toml", env={}, overrides={"site_dir": site_dir}
    )
    sts = _one("StatefulSet", "insitu-site-a")["spec"]["template"]["spec"]
    enrol_script = sts["initContainers"][0]["args"][0]
    assert f"--site-id {s.site_id}" in enrol_script
    assert f"--coordinator {s.coordinator}" in enrol_script
    assert f"--trust-domain {s.trust_domain}" in enrol_script
    config_mount = [m for m in sts["containers"][0]["volumeMounts"] if m["name"] == "config"]
    assert config_mount[0]["mountPath"] == "/var/lib/insitu/data/site.toml"


def test_commands_are_ones_the_clis_accept(
    check_cli: Callable[[Sequence[str]], click.Command],
) -> None:
    checked = 0
    for _, pod in _pod_templates():
        for c in _containers(pod):
            argv = [*c.get("command", []), *c.get("args", [])]
            if argv and argv[0].startswith("insitu"):
                check_cli(argv)
                checked += 1
            elif argv[:2] == ["/bin/sh", "-c"]:
                # The enrolment script: check its insitu-site line (continuations joined).
                script = argv[2].replace("\\\n", " ")
                line = next(ln for ln in script.splitlines() if "insitu-site enrol" in ln)
                words = line.split("exec", 1)[1].split()
                check_cli(words)
                checked += 1
    assert checked >= 3


# ---- the job sandbox (bubblewrap) -----------------------------------------------------
# bwrap, unprivileged, creates a user namespace and in it mount/pid/net/ipc/uts/cgroup
# namespaces with a fresh /proc. In a pod that needs an unmasked /proc (which Kubernetes
# allows only in a pod user namespace) and no runtime seccomp or AppArmor profile. The
# site runs its jobs' ClientApps there, the coordinator its jobs' ServerApps.

# workload -> (the container that runs bwrap, its namespace)
SANDBOXED = {
    "insitu-site-a": ("site", "insitu-site"),
    "insitu-coordinator": ("coordinator", "insitu-coordinator"),
}


def _container(workload: str, name: str) -> dict[str, Any]:
    pod = dict(_pod_templates())[workload]
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


@pytest.mark.parametrize("workload", sorted(SANDBOXED))
def test_pod_can_build_the_job_sandbox(workload: str) -> None:
    pod = dict(_pod_templates())[workload]["spec"]
    assert pod["hostUsers"] is False  # required for procMount Unmasked
    sc = _container(workload, SANDBOXED[workload][0])["securityContext"]
    assert sc["procMount"] == "Unmasked"
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    # The sandbox costs no privilege: still no escalation, no capability, not privileged.
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # The pod default (and so the Vault Agent's injected containers) stays RuntimeDefault.
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_only_the_sandboxing_containers_relax_the_runtime_defaults() -> None:
    checked = 0
    for name, pod in _pod_templates():
        for c in _containers(pod):
            if SANDBOXED.get(name, ("",))[0] == c["name"]:
                continue
            sc = c["securityContext"]
            assert sc.get("procMount", "Default") == "Default", (name, c["name"])
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", (name, c["name"])
            assert "appArmorProfile" not in sc, (name, c["name"])
            checked += 1
        if name not in SANDBOXED:
            assert pod["spec"].get("hostUsers", True) is True, name
    assert checked >= 1  # the site's enrolment init container
    assert set(SANDBOXED) == {n for n, _ in _pod_templates()}


def _pss(namespace: str) -> dict[str, str]:
    labels = _one("Namespace", namespace)["metadata"]["labels"]
    prefix = "pod-security.kubernetes.io/"
    return {k.removeprefix(prefix): v for k, v in labels.items() if k.startswith(prefix)}


def test_each_sandboxing_workload_has_a_namespace_of_its_own() -> None:
    """baseline and restricted both forbid Unmasked /proc and Unconfined seccomp/AppArmor,
    so each namespace that runs a sandbox enforces "privileged" (and audits and warns at
    "restricted"); the coordinator and the site never share one."""
    namespaces = {ns for _, ns in SANDBOXED.values()}
    assert len(namespaces) == len(SANDBOXED)
    assert {d["metadata"]["name"] for d in _of_kind("Namespace")} == namespaces
    for ns in namespaces:
        pss = _pss(ns)
        assert pss["enforce"] == "privileged", ns
        assert pss["audit"] == pss["warn"] == "restricted", ns
        assert pss["audit-version"] == pss["warn-version"] == pss["enforce-version"], ns
    # Every object of a manifest lives in its workload's namespace, defined in that file.
    for name, doc in DOCS:
        file = name.split(":", 1)[0]
        want = {"site.yaml": "insitu-site", "coordinator.yaml": "insitu-coordinator"}[file]
        meta = doc["metadata"]
        got = meta["name"] if doc["kind"] == "Namespace" else meta["namespace"]
        assert got == want, name
    for workload, (_, ns) in SANDBOXED.items():
        kind = "StatefulSet" if workload.startswith("insitu-site") else "Deployment"
        assert _one(kind, workload)["metadata"]["namespace"] == ns


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def test_coordinator_serverapp_settings_fit_the_pod(tmp_path: Path) -> None:
    s = load_settings(
        CoordinatorSettings,
        "coordinator",
        file=_toml("insitu-coordinator-config", "coordinator.toml", tmp_path),
        env={},
    )
    assert s.unsafe_unsandboxed_serverapps is False
    limit = _bytes(_container("insitu-coordinator", "coordinator")["resources"]["limits"]["memory"])
    # A greedy ServerApp hits its own limit, leaving room for the coordinator (and the
    # sandbox's tmpfs mounts), before the pod's OOM kill would take the coordinator too.
    assert s.serverapp_memory_mb * 2**20 <= limit // 2
    assert s.serverapp_cpu_seconds > 0


def test_vault_roles_are_bound_where_the_service_accounts_live() -> None:
    script = (K8S_DIR.parent / "vault" / "bootstrap.sh").read_text()
    defaults = dict(re.findall(r"^k8s_(\w+)_namespace=(\S+)$", script, re.MULTILINE))
    assert defaults == {
        who: _one("ServiceAccount", f"insitu-{who}")["metadata"]["namespace"]
        for who in ("coordinator", "site")
    }
    # The Kubernetes auth roles are written for exactly those variables.
    assert 'coordinator:"$k8s_coordinator_namespace" site:"$k8s_site_namespace"' in script
