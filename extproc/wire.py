"""The wire contract: every name Envoy and the service must agree on, written once.

The renderer (``render/``) writes these names into the Envoy bootstrap and the Lua script;
the adapters (``server/``) read them back; the tests import them from here. Changing one
changes both sides. Nothing here does I/O.

What travels where:

- **ext_proc path.** The service's answer to request headers writes the pick as dynamic
  metadata ``METADATA_NAMESPACE``/``METADATA_HOST_KEY`` (``"ip:port"``), which Envoy's
  Override Host policy reads. The response attributes ``RESPONSE_ATTRIBUTES`` come back on
  the response-headers message so the service can attribute the outcome.
- **lua path (the fast path).** The Lua filter asks the service's sync endpoint
  (``POST SYNC_PATH`` on ``SYNC_CLUSTER``, headers ``SERVICE_HEADER`` and ``WORKER_HEADER``)
  for a service's routing table, and reports outcomes in the same body. Envoy's local
  replies carry ``FLAGS_HEADER`` (the response flags) and every response ``UP_HEADER``
  (the upstream host and attempt count); the script reads and removes both.
- **Both paths.** The service's gRPC cluster ``GRPC_CLUSTER`` (ext_proc, EDS, access log);
  health asks for ``GRPC_HEALTH_SERVICE``. Over TCP every stream and sync request carries
  the shared secret (``SECRET_HEADER``); over Unix sockets the service listens on
  ``GRPC_SOCKET`` and ``SYNC_SOCKET`` in its private directory. Upstream resets after the
  response head reach the service as gRPC access-log entries named ``reset_log_name``.
"""

from __future__ import annotations

import enum
import re


class DataPath(enum.Enum):
    """How a request gets its host: which filter carries the service's decisions."""

    LUA = "lua"
    EXT_PROC = "ext_proc"


#: The dynamic-metadata namespace and key the ext_proc answer writes its pick into.
METADATA_NAMESPACE = "extproc"
METADATA_HOST_KEY = "host"
#: The dynamic-metadata namespace the Lua filter writes (its pick, for the access log).
LUA_METADATA_NAMESPACE = "extproc.lua"

#: The gRPC cluster of the service (ext_proc, EDS, access log) and the HTTP cluster of the
#: fast path's sync endpoint.
GRPC_CLUSTER = "extproc"
SYNC_CLUSTER = "extproc_brain"
#: The gRPC health service name Envoy's health check of the service asks about (the EPP
#: protocol's name for the ext_proc service).
GRPC_HEALTH_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"

#: The fast path's sync request: path and the headers naming the service and the worker.
SYNC_PATH = "/v1/sync"
#: The sync requests' authority (Envoy's stats and access logs show it); the cluster
#: and the authority keep the old name of the sync endpoint, as users' dashboards do.
SYNC_AUTHORITY = "extproc-brain"
SERVICE_HEADER = "x-extproc-service"
WORKER_HEADER = "x-extproc-worker"
#: Response headers the fast path reads and removes before the client sees them: the
#: upstream host with the attempt count, and the response flags of Envoy's local replies.
UP_HEADER = "x-extproc-up"
FLAGS_HEADER = "x-extproc-lr"

#: The header (HTTP) and metadata key (gRPC) that carry the shared secret to the service
#: when Envoy reaches it over TCP (``extproc serve --secret-file``).
SECRET_HEADER = "x-extproc-secret"
_SECRET = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")

#: The service's Unix domain sockets, in the settings' ``socket_dir``.
GRPC_SOCKET = "grpc.sock"
SYNC_SOCKET = "sync.sock"

#: Response attributes the ext_proc path reads to classify an outcome.
RESPONSE_ATTRIBUTES = (
    "response.code_details",
    "response.flags",
    "upstream.request_attempt_count",
    "upstream.address",
)

#: Envoy's response code details of an upstream reset after the response started
#: (``ResponseCodeDetails::LateUpstreamReset``, ``envoy/stream_info/stream_info.h``); the
#: reason follows in braces: ``upstream_reset_after_response_started{protocol_error}``.
LATE_UPSTREAM_RESET = "upstream_reset_after_response_started"
#: The access log that carries those resets names the data path of the Envoy that sends it:
#: on lua the head's success reaches the service later than the reset, on ext_proc before.
_RESET_LOG_PREFIX = "extproc.late_upstream_reset."


def reset_log_name(data_path: DataPath) -> str:
    """The ``log_name`` of the reset access log of an Envoy on ``data_path``."""
    return _RESET_LOG_PREFIX + data_path.value


def is_valid_secret(secret: str) -> bool:
    """Whether a shared secret can travel as a header value and a Lua string as it is.

    Base64, hex and token alphabets only, at least 16 characters: what ``openssl rand
    -base64 32`` or ``secrets.token_urlsafe()`` print.
    """
    return _SECRET.match(secret) is not None
