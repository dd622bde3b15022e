"""Istio's failover for external services, on plain Envoy with an ext_proc service."""

__version__ = "0.1.0"
