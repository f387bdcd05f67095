# insitu-coordinator: what the coordinator's KeyService may do in Vault, and nothing more.
# Bound to the AppRole role "coordinator" by insitu.keys.bootstrap. Mount paths are the ones
# bootstrap_federation creates: pki (root), pki_int (issuing), transit, kv (v2).

# --- PKI: sign/ takes CSRs (the normal path: private keys stay where they are used); ------
# issue/ (Vault generates the key) is for operator tooling only.
path "pki_int/sign/site"    { capabilities = ["create", "update"] }
path "pki_int/sign/user"    { capabilities = ["create", "update"] }
path "pki_int/sign/service" { capabilities = ["create", "update"] }
path "pki_int/issue/site"    { capabilities = ["create", "update"] }
path "pki_int/issue/user"    { capabilities = ["create", "update"] }
path "pki_int/issue/service" { capabilities = ["create", "update"] }
path "pki_int/revoke"       { capabilities = ["create", "update"] }

# CA certificates and the CRL (public data; Vault serves most of it unauthenticated too).
path "pki_int/cert/ca"       { capabilities = ["read"] }
path "pki_int/cert/ca_chain" { capabilities = ["read"] }
path "pki_int/cert/crl"      { capabilities = ["read"] }
path "pki_int/crl"           { capabilities = ["read"] }
# Re-signing an expired CRL (auto-rebuild is off so revocations publish at once).
path "pki_int/crl/rotate"    { capabilities = ["read"] }
path "pki/cert/ca"           { capabilities = ["read"] }
path "pki/ca/pem"            { capabilities = ["read"] }

# --- Transit: Ed25519 signing keys --------------------------------------------------------
path "transit/sign/audit-signing"   { capabilities = ["update"] }
path "transit/sign/model-signing"   { capabilities = ["update"] }
path "transit/verify/audit-signing" { capabilities = ["update"] }
path "transit/verify/model-signing" { capabilities = ["update"] }
path "transit/keys/audit-signing"   { capabilities = ["read"] }
path "transit/keys/model-signing"   { capabilities = ["read"] }

# --- Transit: envelope encryption and the pseudonymization data key -----------------------
path "transit/keys/data-wrapping"              { capabilities = ["read"] }
path "transit/keys/data-wrapping/rotate"       { capabilities = ["update"] }
path "transit/datakey/plaintext/data-wrapping" { capabilities = ["update"] }
path "transit/datakey/wrapped/data-wrapping"   { capabilities = ["update"] }
path "transit/encrypt/data-wrapping"           { capabilities = ["update"] }
path "transit/decrypt/data-wrapping"           { capabilities = ["update"] }
path "transit/rewrap/data-wrapping"            { capabilities = ["update"] }
path "transit/keys/pseudonym"                  { capabilities = ["read"] }
path "transit/datakey/plaintext/pseudonym"     { capabilities = ["update"] }
path "transit/datakey/wrapped/pseudonym"       { capabilities = ["update"] }
path "transit/encrypt/pseudonym"               { capabilities = ["update"] }
path "transit/decrypt/pseudonym"               { capabilities = ["update"] }
path "transit/rewrap/pseudonym"                { capabilities = ["update"] }

# --- KV v2: insitu's own subtree only ------------------------------------------------------
path "kv/data/insitu/*"     { capabilities = ["create", "read", "update"] }
path "kv/metadata/insitu/*" { capabilities = ["read", "list"] }
