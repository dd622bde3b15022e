"""The seed's YAML, with the stand-ins' ports and test-sized outlier times filled in."""

from __future__ import annotations

SERVICE_ENTRY = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: external-svc-dns
spec:
  hosts:
  - mydb.com
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  endpoints:
  - address: dynamodb.us-east-1.amazonaws.com
    locality: us-east1
    ports:
      http: {east_port}
  - address: dynamodb.us-west-1.amazonaws.com
    locality: us-west
    ports:
      http: {west_port}
"""

DESTINATION_RULE = """\
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: mydynamodb
spec:
  host: mydb.com
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: {interval}
      baseEjectionTime: {base}
"""


def seed(
    east_port: int, west_port: int, *, outlier: bool = True, interval: str = "1s", base: str = "2s"
) -> str:
    text = SERVICE_ENTRY.format(east_port=east_port, west_port=west_port)
    if outlier:
        text += DESTINATION_RULE.format(interval=interval, base=base)
    return text
