#!/usr/bin/env bash
# compose service "vault-init": initialise and unseal OpenBao, then run the federation
# bootstrap (deploy/vault/bootstrap.sh). Safe to run on every `docker compose up`.
#
# DEMO ONLY: with one unseal key kept in a volume next to the server, sealing protects
# nothing. In production use several key holders or auto-unseal (KMS/HSM/transit), and
# revoke the root token after bootstrap (see deploy/README.md).
#
# Environment: VAULT_ADDR, TRUST_DOMAIN, BAO_INIT_DIR (root token + unseal key, 0600),
# COORDINATOR_VAULT_DIR (receives role-id, secret-id and ca.pem for the coordinator).
set -euo pipefail
: "${VAULT_ADDR:?}" "${TRUST_DOMAIN:?}" "${BAO_INIT_DIR:?}" "${COORDINATOR_VAULT_DIR:?}"
export VAULT_ADDR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bootstrap="${BOOTSTRAP_SH:-$here/../vault/bootstrap.sh}"
umask 077

# bao status: 0 unsealed, 2 sealed, 1 unreachable.
for _ in $(seq 1 60); do
  rc=0
  bao status > /dev/null 2>&1 || rc=$?
  [[ "$rc" -ne 1 ]] && break
  sleep 1
done
[[ "$rc" -ne 1 ]] || { echo "init-vault: OpenBao at $VAULT_ADDR is unreachable" >&2; exit 1; }

mkdir -p "$BAO_INIT_DIR"
rc=0
bao operator init -status > /dev/null || rc=$?
if [[ "$rc" -eq 2 ]]; then
  echo "init-vault: initialising OpenBao" >&2
  bao operator init -key-shares=1 -key-threshold=1 -format=json > "$BAO_INIT_DIR/init.json"
  python3 - "$BAO_INIT_DIR" << 'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
init = json.loads((d / "init.json").read_text())
(d / "unseal-key").write_text(init["unseal_keys_b64"][0])
(d / "root-token").write_text(init["root_token"] + "\n")
(d / "init.json").unlink()
PY
elif [[ "$rc" -ne 0 ]]; then
  echo "init-vault: cannot read the initialisation status" >&2
  exit 1
fi

rc=0
bao status > /dev/null 2>&1 || rc=$?
if [[ "$rc" -eq 2 ]]; then
  echo "init-vault: unsealing" >&2
  # key=@file: the key never appears on a command line.
  bao write sys/unseal key=@"$BAO_INIT_DIR/unseal-key" > /dev/null
fi

VAULT_TOKEN_FILE="$BAO_INIT_DIR/root-token" "$bootstrap" \
  --trust-domain "$TRUST_DOMAIN" --out "$COORDINATOR_VAULT_DIR"
