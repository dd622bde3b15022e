"""Envoy bootstrap generation: the policy and the settings in, Envoy's config out.

- ``bootstrap``: ``render_bootstrap(policy, settings)`` (the whole bootstrap, and why both
  data paths look as they do), ``eds_cluster_config``, ``lua_source`` (``bridge.lua`` with
  its words filled in from ``extproc.wire``).
- ``clusters``: each service's EDS cluster, balanced for the data path; the service's own
  gRPC and sync clusters.
- ``routes``: one virtual host per service with Istio's retries, and the 404 catch-all.
- ``filters``: the lua or ext_proc filter, the router, local replies, the reset access log.
- ``tls``: upstream TLS origination as pilot builds it.
- ``typed``: the helpers every piece uses (``packed``, durations, wrappers, ``to_data``).
- ``shipped``: the config in ``envoy/``, rendered from ``envoy/mydb.yaml``.

Rules of the room: pure functions, no I/O but reading ``bridge.lua`` from the package, no
event loop, no logging. Imports ``core``, ``istio`` (``shipped`` only), ``settings`` and
``wire``, never ``server`` or ``cli``. Every piece is an xds-protos message, so a wrong
field fails where it is written; plain data appears only at the edge (``to_data``). Every
name Envoy and the service share comes from ``extproc.wire``, never spelled here.
"""
