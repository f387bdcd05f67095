# OpenBao server for the compose demo: integrated (Raft) storage in a volume, HTTP on the
# compose network only (no port is published). Production: TLS on the listener, several
# unseal key holders or auto-unseal, three or five Raft nodes (see deploy/README.md).
ui           = false
api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"

storage "raft" {
  path    = "/openbao/file" # exists in the image, owned by the openbao user
  node_id = "openbao-1"
}

listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true # compose-internal network only; see the header
  telemetry {
    # Prometheus scrapes /v1/sys/metrics without a token; it exposes counters only.
    unauthenticated_metrics_access = true
  }
}

telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}
