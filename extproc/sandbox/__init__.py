"""Loopback stand-ins for the outside world: a DNS responder and upstreams that fail on command.

The demo, the e2e and differential tests and the benchmark point Envoy at these instead of the
real endpoints. Modules:

- ``answers``: ``Mode`` (healthy, 503, 500, refuse, hang, reset) and the HTTP answers of each.
- ``http_connection``: one client connection: HTTP/1.1 framing, in-order answers, hang and RST.
- ``stand_in``: ``StandIn``, the server: the port, REFUSE and back on the same port, TLS.
- ``dns_responder``: ``DnsResponder``, a DNS server on loopback that answers for the endpoint names.
- ``client``: ``get``, a minimal HTTP/1.1 client for tests and the demo.
- ``control``: a stand-in as a process with an HTTP control port (docker-compose).
- ``__main__``: ``python -m extproc.sandbox`` (stand-in, set-mode, dns).

Rules of the room: a test and demo stand-in, never part of the product's path. It imports the
standard library, structlog and dnspython, and nothing else of ``extproc``; ``core``, ``istio``,
``render`` and ``server`` never import it (``tests/unit/test_layers.py``). Everything runs on
the caller's event loop and binds only addresses in 127.0.0.0/8; the one exception is the
stand-in process of docker-compose (``python -m extproc.sandbox stand-in --any-address``), which
listens on its container's network.
"""

from __future__ import annotations

from extproc.sandbox.answers import Mode
from extproc.sandbox.dns_responder import DnsResponder
from extproc.sandbox.stand_in import StandIn

__all__ = ["DnsResponder", "Mode", "StandIn"]
