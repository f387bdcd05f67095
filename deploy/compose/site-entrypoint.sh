#!/usr/bin/env bash
# compose services site-*: enrol once (key made here, 0600; CSR + one-time token), then
# run the site daemon. A site that already holds an identity skips straight to `run`.
#
# Environment: SITE_ID, TRUST_DOMAIN, COORDINATOR (HOST:PORT), SITE_DIR, JOIN_DIR (token,
# ca.pem); optional ENROL_ADDRESS (default: the coordinator's port + 1).
set -euo pipefail
: "${SITE_ID:?}" "${TRUST_DOMAIN:?}" "${COORDINATOR:?}" "${SITE_DIR:?}" "${JOIN_DIR:?}"

if [[ ! -e "$SITE_DIR/tls/cert.pem" ]]; then
  [[ -s "$JOIN_DIR/token" ]] || { echo "site: no join token in $JOIN_DIR" >&2; exit 1; }
  # The token reaches insitu-site through its environment only, never argv (ps shows argv).
  INSITU_JOIN_TOKEN="$(< "$JOIN_DIR/token")" insitu-site enrol \
    --coordinator "$COORDINATOR" --ca-file "$JOIN_DIR/ca.pem" \
    --site-dir "$SITE_DIR" --site-id "$SITE_ID" --trust-domain "$TRUST_DOMAIN" \
    ${ENROL_ADDRESS:+--enrol-address "$ENROL_ADDRESS"}
fi
exec insitu-site run --site-dir "$SITE_DIR"
