"""Loopback stand-ins for the outside world: a DNS responder and failable upstream servers.

The demo, the e2e tests and the benchmark point Envoy at these instead of the real endpoints; they
bind and answer only with addresses in 127.0.0.0/8. The one exception is the stand-in process of
docker-compose (``python -m extproc.sandbox stand-in --any-address``), which listens on its
container's network.
"""

from __future__ import annotations

from extproc.sandbox.dns_responder import DnsResponder
from extproc.sandbox.upstream import Mode, StandIn

__all__ = ["DnsResponder", "Mode", "StandIn"]
