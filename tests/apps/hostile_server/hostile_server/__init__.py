"""A hostile ServerApp: tries the coordinator's keys, token, data, Vault and other jobs."""
