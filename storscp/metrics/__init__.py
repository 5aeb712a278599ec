"""The metrics process: the Prometheus endpoint and /healthz of the whole service."""
