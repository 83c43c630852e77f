"""What the daemon serves over HTTP: Prometheus metrics and the live/ready health checks."""
