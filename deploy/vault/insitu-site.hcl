# insitu-site: what a site may do in Vault, and nothing more.
#
# In the current code a site never calls Vault: its certificate comes from the coordinator,
# which has Vault sign the site's CSR. This policy exists for deployments that give each
# site a Vault identity (Kubernetes auth, AppRole) so that it can
#   1. read the transit public keys, to verify coordinator checkpoints (which it cosigns)
#      and model signatures before it loads a model, offline afterwards;
#   2. obtain the pseudonymization data key: generate it once (the plaintext stays in the
#      site's memory, the wrapped copy on its disk) and unwrap it at each start.
# It can sign nothing, issue no certificate, read no KV and see no other key.

# --- 1. public keys of the Ed25519 signing keys (the private halves are not exportable) ---
path "transit/keys/audit-signing" { capabilities = ["read"] }
path "transit/keys/model-signing" { capabilities = ["read"] }

# --- 2. the pseudonymization HMAC key ------------------------------------------------------
path "transit/datakey/plaintext/pseudonym" { capabilities = ["update"] }
path "transit/decrypt/pseudonym"           { capabilities = ["update"] }
