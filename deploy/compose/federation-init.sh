#!/usr/bin/env bash
# compose service "federation-init": issue the first federation_admin identity from Vault,
# then mint a one-time join token per site (bound to that site id, 1 h) and put it, with
# the federation CA, where only that site's container can read it (a volume subpath).
#
# Environment: TRUST_DOMAIN, VAULT_ADDR, COORDINATOR (HOST:PORT of the mTLS listener),
# BAO_INIT_DIR (root-token), CA_FILE, ADMIN_DIR, JOIN_DIR, SITES (space separated);
# optional ADMIN_USER (default admin).
set -euo pipefail
: "${TRUST_DOMAIN:?}" "${VAULT_ADDR:?}" "${COORDINATOR:?}" "${BAO_INIT_DIR:?}" "${CA_FILE:?}"
: "${ADMIN_DIR:?}" "${JOIN_DIR:?}" "${SITES:?}"
umask 077

insitu admin bootstrap --out "$ADMIN_DIR" --vault-addr "$VAULT_ADDR" \
  --vault-token-file "$BAO_INIT_DIR/root-token" --trust-domain "$TRUST_DOMAIN" --ttl 1h \
  --user "${ADMIN_USER:-admin}"

for site in $SITES; do
  dir="$JOIN_DIR/$site"
  mkdir -p "$dir"
  # A token lives 1 h; an unused one older than 50 min is replaced, a fresher one kept.
  if [[ -s "$dir/token" && -z "$(find "$dir/token" -mmin +50)" ]]; then
    continue
  fi
  cp "$CA_FILE" "$dir/ca.pem"
  # The token is the last line on stdout; it goes to a file, never to the log.
  insitu token create --site "$site" --ttl 1h --coordinator "$COORDINATOR" \
    --identity "$ADMIN_DIR" --trust-domain "$TRUST_DOMAIN" | tail -n 1 > "$dir/token.new"
  mv "$dir/token.new" "$dir/token"
  echo "federation-init: join token for $site ready" >&2
done
