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
  (the upstream host and attempt count); the script reads and removes both. On a weighted
  route the script writes its pick of the route's clusters into ``CLUSTER_HEADER``, which
  the route's siblings match (``render/routes.py``) and Envoy removes before the upstream.
- **module path.** Envoy loads the C shim ``MODULE_NAME`` (``lib<MODULE_NAME>.so``) as a
  dynamic-module HTTP filter, and as the router's upstream access log
  ``MODULE_ATTEMPT_LOGGER`` (one log per upstream attempt); it connects to ``MODULE_SOCKET``
  (a ``SOCK_SEQPACKET`` Unix socket) and hands the service its shared-memory region (a
  sealed memfd). The service writes each service's table into the region's entries under a
  seqlock; per attempt, the module counts a success in the region or sends the attempt's
  outcome as a record. The layout is the section "module path" below;
  ``server/module_region.py`` reads and writes it.
- **All paths.** The service's gRPC cluster ``GRPC_CLUSTER`` (ext_proc, EDS, access log);
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
    MODULE = "module"


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
#: The request header the fast path writes its pick of a weighted route's clusters into,
#: always overwriting a client's (a client's matches at most one of the route's own
#: destinations); removed before the upstream.
CLUSTER_HEADER = "x-extproc-cluster"

#: The header (HTTP) and metadata key (gRPC) that carry the shared secret to the service
#: when Envoy reaches it over TCP (``extproc serve --secret-file``).
SECRET_HEADER = "x-extproc-secret"
_SECRET = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")

#: The service's Unix domain sockets, in the settings' ``socket_dir``.
GRPC_SOCKET = "grpc.sock"
SYNC_SOCKET = "sync.sock"

#: The request attribute that names the cluster of the request's route (measured on Envoy
#: 1.40: set when ext_proc gets the request headers, weighted clusters' pick included).
ROUTE_CLUSTER_ATTRIBUTE = "xds.cluster_name"
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


#: Envoy's response code details of a route's timeout while an attempt awaited its headers
#: (``ResponseCodeDetails::ResponseTimeout``): its router then reports a local-origin
#: timeout for that attempt's host (``Filter::onResponseTimeout``).
ROUTE_TIMEOUT = "response_timeout"
#: The module path's access log of those requests: the attempt's own log shows no timeout
#: (the flag is set on the downstream stream only), so the service learns it from here.
ROUTE_TIMEOUT_LOG_NAME = "extproc.route_timeout.module"
#: The same log on the lua and ext_proc paths, for the clusters Envoy balances alone
#: (``Service.envoy_balances``): their script or ext_proc server sees no request of theirs.
ENVOY_BALANCED_TIMEOUT_LOG_NAME = "extproc.route_timeout.envoy_balanced"
#: The router's upstream log of every attempt on the clusters Envoy balances alone, on the
#: lua and ext_proc paths (the module path's attempt log already carries every attempt).
ENVOY_BALANCED_ATTEMPT_LOG_NAME = "extproc.attempts.envoy_balanced"


def is_valid_secret(secret: str) -> bool:
    """Whether a shared secret can travel as a header value and a Lua string as it is.

    Base64, hex and token alphabets only, at least 16 characters: what ``openssl rand
    -base64 32`` or ``secrets.token_urlsafe()`` print.
    """
    return _SECRET.match(secret) is not None


# --- module path ----------------------------------------------------------------------------
# The contract between the C shim (``extproc/module/extproc_module.c``, which declares its own
# copies of these; a unit test checks they agree) and the service (``server/module_region.py``,
# ``server/module_link.py``). All integers little-endian and naturally aligned.

#: The module's name in ``dynamic_module_config`` (Envoy loads ``lib<name>.so`` from
#: ``$ENVOY_DYNAMIC_MODULES_SEARCH_PATH``), and the ``filter_name`` its ``config_new`` gets.
MODULE_NAME = "extproc_module"
MODULE_FILTER_NAME = "extproc"
#: The ``logger_name`` of the module's access logger, the router's ``upstream_log``: Envoy
#: logs every upstream attempt to it as the attempt ends (its host, status and flags).
MODULE_ATTEMPT_LOGGER = "attempts"
#: The variable Envoy finds dynamic modules in.
MODULE_SEARCH_PATH_VAR = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH"
#: The service's ``SOCK_SEQPACKET`` socket in ``socket_dir``; the filter's config is its path.
MODULE_SOCKET = "module.sock"
#: The dynamic-module ABI the shim is written for and the Envoy series that speaks it
#: (``envoy_dynamic_module_on_program_init`` returns the version; Envoy 1.40 only warns on a
#: mismatch, so the service checks the series before it starts Envoy with the module).
MODULE_ABI_VERSION = "v0.2.0"
MODULE_ENVOY_SERIES = "1.40"


class ModuleLb(enum.IntEnum):
    """An entry's ``lb`` byte: how the module chooses among the entry's hosts."""

    ROUND_ROBIN = 0
    LEAST_REQUEST = 1
    RANDOM = 2
    # Envoy's own balancer picks (consistent hash, slow start): the module sets no
    # override and only reports each attempt's outcome on the entry's hosts.
    ENVOY = 3


#: The region: a header, the service entries (written only by the service, under a seqlock
#: each), then the success counters (written only by the module, one row per worker).
REGION_MAGIC = b"EXTPROCM"
LAYOUT_VERSION = 1
PAGE_SIZE = 4096
HEADER_SIZE = 128
MAX_SERVICES = 256
MAX_HOSTS = 64  # per service
MAX_WORKERS = 64
HOST_SLOTS = 4096
#: Header: magic, layout, region_size, max_services, max_hosts, max_workers, host_slots,
#: concurrency, pid, then the module's own counters (atomic adds): dropped (failure records
#: it could not send), bad_snapshots (entries it refused), overrides_refused
#: (``set_upstream_override_host`` said false); 64..127 reserved, zero.
HEADER_FORMAT = "<8sIIIIIIIIQQQ"
HEADER_DROPPED_OFFSET = 40
HEADER_BAD_SNAPSHOTS_OFFSET = 48
HEADER_OVERRIDES_REFUSED_OFFSET = 56

#: A service entry: seq (seqlock: even stable, odd being written), version, name_len (0: slot
#: unused), lb, flags, n_hosts, error_codes (bitmap of statuses 0..639: bit s = byte s/8,
#: bit s%8), choice_count, reserved, name (the EDS cluster name, not NUL-terminated), then
#: ``MAX_HOSTS`` hosts.
ENTRIES_OFFSET = PAGE_SIZE
ENTRY_SIZE = 4384
ENTRY_HEAD_FORMAT = "<QQHBBI80sI4s176s"
ENTRY_SEQ_OFFSET = 0
ENTRY_HOSTS_OFFSET = 288
ENTRY_NAME_MAX = 176
ERROR_CODES_BITS = 640
#: flags bit 0: the service has not learned this service's hosts yet: no override.
ENTRY_FLAG_WITHHELD = 0x1
#: A host: weight (> 0), host_slot (< ``HOST_SLOTS``), addr_len, reserved, addr
#: (``ip:port`` or ``[v6]:port``, at most ``HOST_ADDR_MAX`` bytes).
HOST_FORMAT = "<IHBx56s"
HOST_SIZE = 64
HOST_ADDR_MAX = 55

#: ``u64 successes[MAX_WORKERS][HOST_SLOTS]``, page-aligned after the entries.
COUNTERS_OFFSET = -(-(ENTRIES_OFFSET + MAX_SERVICES * ENTRY_SIZE) // PAGE_SIZE) * PAGE_SIZE
REGION_SIZE = COUNTERS_OFFSET + MAX_WORKERS * HOST_SLOTS * 8

#: The module's hello, the first message of a link, sent with the memfd as SCM_RIGHTS:
#: magic, layout, region_size, pid, concurrency, then zero up to ``HELLO_SIZE``.
HELLO_MAGIC = b"EXTPROCH"
HELLO_SIZE = 64
HELLO_FORMAT = "<8sIIII"
#: The module retries a lost link this often.
MODULE_RECONNECT_MS = 100

#: An outcome record, one SEQPACKET message for one upstream attempt that was not a clean
#: success on a host of the worker's snapshot (those are counted): magic, worker, slot (the
#: entry's index), version (of the worker's snapshot), the attempt host's index in that
#: snapshot and its host_slot (``NO_HOST_INDEX`` and ``NO_HOST_SLOT``: not a host of it),
#: reserved, kind, the attempt's response code (0: none), reserved, the attempt's response
#: flags (Envoy's bitmask), the host's successes counted by this worker before this record
#: (its counter's value), addr_len + addr (the attempt's ``upstream.address``), reserved.
#: Reserved bytes are zero.
RECORD_MAGIC = b"EXRR"
RECORD_SIZE = 128
RECORD_FORMAT = "<4sHHQHHHHIIQQB55s24s"
#: The record's kind (offset 22): the only one is an attempt, as the router's upstream log
#: reports it.
RECORD_KIND_ATTEMPT = 1
NO_HOST_INDEX = 0xFFFF
NO_HOST_SLOT = 0xFFFF

#: The service's rules for what it writes: a host's slot is not given to another host for
#: this long after it left (counters stay attributable), and the success counters are read
#: this often.
HOST_SLOT_REUSE_AFTER_S = 10.0
COUNTER_SWEEP_S = 0.1
