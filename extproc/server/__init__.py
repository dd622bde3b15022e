"""The adapters: Envoy's protocols, DNS, HTTP endpoints and the lifecycle around the core.

The room's rules: everything here runs on one asyncio event loop (the grpc.aio server, the
HTTP endpoints, the DNS refresh and the sweeps share it), and nothing blocks it: DNS goes
through ``dns.asyncresolver``, config files are read off the loop. Modules here may import
``core``, ``istio``, ``render``, ``errors``, ``clock``, ``settings`` and ``wire``, and
``module`` (the C shim's build) lazily from ``stack`` (``tests/unit/test_layers.py``), never
``cli``. Nothing here decides: a decision is a
``core`` call; a module here turns a message into that call and its answer into a message.

- ``app``: the service's start-up and shutdown in one place (ServiceApp).
- ``lifecycle``: the one owner of a run: signals, SIGHUP, the reload task, ordered shutdown.
- ``stack``: ``extproc up``, the service and Envoy together on one machine.
- ``servicer``: the ext_proc data path (ExternalProcessor).
- ``sync``: the lua data path's sync endpoint (SyncEndpoint, SyncServer).
- ``module_link``, ``module_tables``, ``module_region``: the module data path: the links
  to Envoy's C shim, the tables written into its regions, and the region's bytes (no I/O).
- ``access_log``: upstream resets after the response started, from Envoy's access log.
- ``eds``: EDS over gRPC (hosts and health for Envoy's clusters).
- ``resolver``: DNS refresh of ServiceEntry endpoint names.
- ``reload``: watch the config, validate a change off the loop, apply it whole.
- ``admin``, ``metrics``: the admin address (endpoint view, health) and Prometheus metrics.
- ``http_server``: the small HTTP/1.1 server the admin address and the sync endpoint use.
- ``envoy_process``: find, validate and run the Envoy binary.
- ``logs``: structlog, configured once.
"""
