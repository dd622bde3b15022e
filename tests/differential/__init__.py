"""Differential tests: extproc against Istio's own sidecar Envoy, request by request."""
