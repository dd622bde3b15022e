"""The pure heart: localities, priorities, outlier detection and picking, with no I/O at all.

The room's rules: nothing here does I/O, reads a clock, logs, sleeps or touches asyncio;
every function that depends on time takes ``now`` (seconds on one monotonic scale) and
returns decisions and events for the adapters to act on. Randomness comes in as a seeded
``random.Random``. Modules here import only the standard library, each other and
``extproc.errors`` (a leaf of value types); never grpc, protobuf, Envoy's messages, YAML or
structlog (``tests/unit/test_core_imports.py``). Nothing here is thread-safe: one event loop
owns the state (``server/``).

- ``policy``: the compiled, immutable policy (``Service``, ``Endpoint``, ``Workload``, ...).
- ``locality``: which endpoints a workload prefers: Istio's priorities and locality weights.
- ``priority``: Envoy's priority load and panic arithmetic.
- ``outlier``: what crosses the outlier detector's boundary (``AttemptResult``,
  ``HostMonitor``, ``OutlierEvent``); ``outlier_detector``: the detector itself.
- ``hostset``: one cluster's hosts by priority and locality, healthy sets, priority load.
- ``balancer``: the priority draw, the locality schedule and the host choice (``Pick``).
- ``cluster``: ``ClusterState``, the façade over hostset, detector and balancer.
- ``table``: ``ServiceTable``, every cluster found by a request's authority.
- ``change``: what a reload changes (``policy_change``, new DNS names).
- ``outcome``: the ext_proc path's attribution of a response to its attempts.
- ``reports``: the sync protocol's report lines -> attempt results.
"""
