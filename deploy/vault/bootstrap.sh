#!/usr/bin/env bash
# Bring a real Vault or OpenBao server to the state insitu expects; safe to run again.
#
# The shell twin of insitu/keys/bootstrap.py (which `make demo` and the tests use against
# the dev server): the same mounts, CAs, PKI roles, transit keys, policies and AppRole.
# Existing pieces are kept; roles and policies are rewritten to their declared form.
#
# Usage:
#   export VAULT_ADDR=https://vault.example.org:8200     # or BAO_ADDR
#   export VAULT_TOKEN_FILE=/root/vault-admin-token       # or VAULT_TOKEN / BAO_TOKEN
#   deploy/vault/bootstrap.sh --trust-domain example.org [--out DIR] [options]
#
# Options:
#   --trust-domain TD     SPIFFE trust domain of the federation (required)
#   --max-ttl DUR         lifetime bound of the CAs (default 8760h)
#   --secret-id-ttl DUR   how long a coordinator AppRole secret id stays usable (default 720h)
#   --url-base URL        base URL written into the CAs' AIA/CRL fields (default $VAULT_ADDR)
#   --out DIR             write role-id, a fresh secret-id (0600) and ca.pem (federation
#                         root) there: what `insitu-coordinator serve` needs
#   --approle-to-kv       also store that role id / secret id at kv/insitu/coordinator/approle,
#                         where the Kubernetes Vault Agent template reads them
#   --k8s-coordinator-namespace NS
#                         when auth/kubernetes is enabled, bind the Kubernetes role
#                         insitu-coordinator to service accounts in NS (default:
#                         insitu-coordinator, see deploy/k8s/coordinator.yaml); the older
#                         spelling --k8s-namespace NS still works
#   --k8s-site-namespace NS
#                         ... and insitu-site to service accounts in NS (default:
#                         insitu-site, see deploy/k8s/site.yaml)
#
# The token must be allowed to mount engines and write policies. Nothing secret is taken
# on the command line (it would show in `ps`): tokens come from the environment or a file.
set -euo pipefail

readonly PKI_ROOT=pki PKI_INT=pki_int TRANSIT=transit KV=kv APPROLE=approle
readonly CRL_EXPIRY=72h ROLE_MAX_TTL=720h
POLICY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly POLICY_DIR
# name:type; Ed25519 so that signatures verify offline with plain `cryptography`.
readonly TRANSIT_KEYS=(
  audit-signing:ed25519
  model-signing:ed25519
  data-wrapping:aes256-gcm96
  pseudonym:aes256-gcm96
)

die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }
say() { printf 'bootstrap: %s\n' "$*" >&2; }

trust_domain="" max_ttl=8760h secret_id_ttl=720h url_base="" out="" approle_to_kv=0
k8s_coordinator_namespace=insitu-coordinator
k8s_site_namespace=insitu-site
while (($#)); do
  case "$1" in
    --trust-domain) trust_domain="${2:?}"; shift 2 ;;
    --max-ttl) max_ttl="${2:?}"; shift 2 ;;
    --secret-id-ttl) secret_id_ttl="${2:?}"; shift 2 ;;
    --url-base) url_base="${2:?}"; shift 2 ;;
    --out) out="${2:?}"; shift 2 ;;
    --approle-to-kv) approle_to_kv=1; shift ;;
    --k8s-coordinator-namespace | --k8s-namespace) k8s_coordinator_namespace="${2:?}"; shift 2 ;;
    --k8s-site-namespace) k8s_site_namespace="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,32p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ -n "$trust_domain" ]] || die "--trust-domain is required"
# Same rule as insitu.identity.spiffe.validate_trust_domain: a lower-case DNS name.
[[ "$trust_domain" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$ ]] \
  || die "invalid trust domain: $trust_domain"

# --- the CLI and its connection ------------------------------------------------------------
if [[ -n "${VAULT_CLI:-}" ]]; then cli="$VAULT_CLI"
elif command -v bao > /dev/null; then cli=bao
elif command -v vault > /dev/null; then cli=vault
else die "neither bao nor vault is on PATH (set VAULT_CLI)"; fi
# Both CLIs read VAULT_ADDR / VAULT_TOKEN; export one pair so either CLI sees it.
export VAULT_ADDR="${VAULT_ADDR:-${BAO_ADDR:-}}"
[[ -n "$VAULT_ADDR" ]] || die "set VAULT_ADDR (or BAO_ADDR)"
if [[ -n "${VAULT_TOKEN_FILE:-}" ]]; then
  VAULT_TOKEN="$(< "$VAULT_TOKEN_FILE")"
fi
export VAULT_TOKEN="${VAULT_TOKEN:-${BAO_TOKEN:-}}"
[[ -n "$VAULT_TOKEN" ]] || die "set VAULT_TOKEN_FILE (or VAULT_TOKEN / BAO_TOKEN)"
unset BAO_ADDR BAO_TOKEN
url_base="${url_base:-$VAULT_ADDR}"
url_base="${url_base%/}"

v() { "$cli" "$@"; }
# Read one field; prints nothing (and succeeds) when the path does not exist.
field() { v read -field="$1" "$2" 2> /dev/null || true; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077

# --- 1. secrets engines ----------------------------------------------------------------------
ensure_mount() { # path type [extra args]
  local path="$1" type="$2" existing
  shift 2
  existing="$(field type "sys/mounts/$path")"
  if [[ -z "$existing" ]]; then
    say "enable $type at $path/"
    v secrets enable -path="$path" -max-lease-ttl="$max_ttl" "$@" "$type" > /dev/null
  elif [[ "$existing" != "$type" ]]; then
    die "mount $path/ exists with type $existing, expected $type"
  fi
}
ensure_mount "$PKI_ROOT" pki
ensure_mount "$PKI_INT" pki
ensure_mount "$TRANSIT" transit
ensure_mount "$KV" kv -version=2
for mount in "$PKI_ROOT" "$PKI_INT"; do
  v secrets tune -max-lease-ttl="$max_ttl" "$mount" > /dev/null
  v write "$mount/config/urls" \
    issuing_certificates="$url_base/v1/$mount/ca" \
    crl_distribution_points="$url_base/v1/$mount/crl" > /dev/null
  # Auto-rebuild off: Vault then rebuilds the CRL on every revocation, which the per-call
  # revocation check relies on.
  v write "$mount/config/crl" expiry="$CRL_EXPIRY" auto_rebuild=false > /dev/null
done

# --- 2. root CA (pki) and issuing intermediate (pki_int) -------------------------------------
if [[ -z "$(field default "$PKI_ROOT/config/issuers")" ]]; then
  say "generate the root CA"
  v write -field=certificate "$PKI_ROOT/root/generate/internal" \
    common_name="insitu $trust_domain root CA" key_type=ec key_bits=384 \
    ttl="$max_ttl" exclude_cn_from_sans=true > /dev/null
fi
# Re-signing the intermediate later must not fail near the root's end of life.
v write "$PKI_ROOT/issuer/default" leaf_not_after_behavior=truncate > /dev/null

if [[ -z "$(field default "$PKI_INT/config/issuers")" ]]; then
  say "generate and sign the intermediate CA"
  cn="insitu $trust_domain intermediate CA"
  v write -field=csr "$PKI_INT/intermediate/generate/internal" \
    common_name="$cn" key_type=ec key_bits=256 exclude_cn_from_sans=true > "$work/int.csr"
  v write -field=certificate "$PKI_ROOT/root/sign-intermediate" csr=@"$work/int.csr" \
    common_name="$cn" ttl="$max_ttl" use_csr_values=false exclude_cn_from_sans=true \
    > "$work/int.pem"
  # Only the intermediate is imported: pki_int holds no root, so issued chains stop below
  # the trust anchor.
  v write "$PKI_INT/intermediate/set-signed" certificate=@"$work/int.pem" > /dev/null
fi

# --- 3. PKI roles (JSON on stdin: exact lists and booleans) -----------------------------------
common='"key_type": "ec", "key_bits": 256, "require_cn": false,
  "use_csr_common_name": false, "use_csr_sans": false, "enforce_hostnames": true,
  "allow_bare_domains": false, "allow_glob_domains": false, "allow_any_name": false,
  "allow_wildcard_certificates": false, "no_store": false, "generate_lease": false,
  "max_ttl": "'"$ROLE_MAX_TTL"'", "not_before_duration": "5s"'
write_role() { # name json-members
  v write "$PKI_INT/roles/$1" - > /dev/null <<< "{ $common, $2 }"
}
write_role site '"client_flag": true, "server_flag": true,
  "allowed_domains": ["site.'"$trust_domain"'"], "allow_subdomains": true,
  "allow_localhost": false, "allow_ip_sans": false,
  "allowed_uri_sans": ["spiffe://'"$trust_domain"'/site/*"]'
write_role user '"client_flag": true, "server_flag": false,
  "allowed_domains": [], "allow_subdomains": false,
  "allow_localhost": false, "allow_ip_sans": false,
  "allowed_uri_sans": ["spiffe://'"$trust_domain"'/user/*"]'
write_role service '"client_flag": true, "server_flag": true,
  "allowed_domains": ["'"$trust_domain"'"], "allow_subdomains": true,
  "allow_localhost": true, "allow_ip_sans": true,
  "allowed_uri_sans": ["spiffe://'"$trust_domain"'/service/*"]'

# --- 4. transit keys ----------------------------------------------------------------------------
for entry in "${TRANSIT_KEYS[@]}"; do
  name="${entry%%:*}" type="${entry#*:}"
  actual="$(field type "$TRANSIT/keys/$name")"
  if [[ -z "$actual" ]]; then
    say "create transit key $name ($type)"
    v write -f "$TRANSIT/keys/$name" type="$type" > /dev/null
  elif [[ "$actual" != "$type" ]]; then
    # Vault ignores a create for an existing name: a wrong type would surface only later.
    die "transit key $name exists with type $actual, expected $type"
  fi
done

# --- 5. policies and the coordinator's AppRole ---------------------------------------------------
for policy in insitu-coordinator insitu-site insitu-auditor; do
  v policy write "$policy" "$POLICY_DIR/$policy.hcl" > /dev/null
done
if [[ -z "$(field type "sys/auth/$APPROLE")" ]]; then
  say "enable AppRole auth"
  v auth enable -path="$APPROLE" approle > /dev/null
fi
v write "auth/$APPROLE/role/coordinator" token_policies=insitu-coordinator \
  token_ttl=1h token_max_ttl=4h secret_id_ttl="$secret_id_ttl" bind_secret_id=true > /dev/null

# --- 6. Kubernetes auth roles (only where the operator enabled and configured it) --------------
if [[ -n "$(field type sys/auth/kubernetes)" ]]; then
  for who in coordinator:"$k8s_coordinator_namespace" site:"$k8s_site_namespace"; do
    v write "auth/kubernetes/role/insitu-${who%%:*}" \
      bound_service_account_names="insitu-${who%%:*}" \
      bound_service_account_namespaces="${who#*:}" \
      token_policies="insitu-${who%%:*}" token_ttl=1h token_max_ttl=4h > /dev/null
  done
  say "Kubernetes auth roles: insitu-coordinator in namespace $k8s_coordinator_namespace," \
    "insitu-site in namespace $k8s_site_namespace"
fi

# --- 7. credentials for the coordinator -----------------------------------------------------------
if [[ -n "$out" || "$approle_to_kv" == 1 ]]; then
  role_id="$(v read -field=role_id "auth/$APPROLE/role/coordinator/role-id")"
  secret_id="$(v write -f -field=secret_id "auth/$APPROLE/role/coordinator/secret-id")"
  if [[ -n "$out" ]]; then
    mkdir -p "$out"
    printf '%s\n' "$role_id" > "$out/role-id"
    printf '%s\n' "$secret_id" > "$out/secret-id"
    v read -field=certificate "$PKI_ROOT/cert/ca" > "$out/ca.pem"
    printf '\n' >> "$out/ca.pem"
    say "role-id, secret-id (0600) and ca.pem written to $out"
  fi
  if [[ "$approle_to_kv" == 1 ]]; then
    # Values go on stdin, never on the command line.
    printf '{"role_id": "%s", "secret_id": "%s"}' "$role_id" "$secret_id" \
      | v kv put -mount="$KV" insitu/coordinator/approle - > /dev/null
    say "AppRole credentials stored at $KV/insitu/coordinator/approle"
  fi
fi
say "federation $trust_domain is bootstrapped at $VAULT_ADDR"
