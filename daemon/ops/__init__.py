"""What operators see: /healthz, /readyz and /metrics."""
