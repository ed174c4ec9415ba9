"""Monitoring: the live dashboard (``tickflow dashboard``), the alert receiver, Prometheus rules."""
