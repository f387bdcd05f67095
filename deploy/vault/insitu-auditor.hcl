# insitu-auditor: what an auditor (QSA, compliance officer) may do in Vault.
#
# `insitu-audit` verifies logs offline. The one thing it needs from Vault is the public key
# that signs audit checkpoints, fetched once and pinned; everything else (the log export,
# a trusted checkpoint) comes from the operator. Reading a transit key returns its public
# halves and metadata only: the private key is not exportable.
path "transit/keys/audit-signing" { capabilities = ["read"] }
