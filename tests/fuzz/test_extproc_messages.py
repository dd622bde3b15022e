"""Fuzzing the ext_proc servicer with the messages Envoy sends, and ones it never does.

Streams are sequences of ``ProcessingRequest`` messages: Envoy's order (request headers,
bodies, response headers, trailers) or any order; headers in ``raw_value`` or ``value``,
missing, repeated, huge or not UTF-8; authorities of the services, near misses and noise;
the response attributes missing, in another namespace or of another type (NaN, infinities,
strings, lists); ``upstream.address`` naming our hosts, other services' hosts and nonsense;
and streams Envoy drops half-way. Whatever arrives:

- every message gets one answer of its own kind, and nothing is logged as an error (no
  exception reaches the stream handler's last guard, let alone escapes it);
- a routing decision (``extproc.host``) is a host of the service the authority names; no
  service means the 404 immediate response;
- outcomes are counted only for that service's hosts, other services are untouched, and
  when a stream ends no host is left with an active request.

A tenth as many examples go through a real grpc.aio server on 127.0.0.1:0, with frames
that are not ``ProcessingRequest`` messages at all: the server keeps answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import pytest
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.core.cluster import ClusterState
from extproc.core.hostset import HostView
from extproc.core.table import ServiceTable
from extproc.server.metrics import Metrics
from extproc.server.servicer import ExternalProcessor
from extproc.testing import request_headers, response_headers, routed_host
from tests.fuzz import world

# Huge header values are the point here; hypothesis warns when it prints them.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

_ATTRIBUTES = "envoy.filters.http.ext_proc"
_ATTRIBUTE_NAMES = (
    "response.code_details",
    "response.flags",
    "upstream.request_attempt_count",
    "upstream.address",
)

# -- strategies ------------------------------------------------------------------------

# Protobuf string fields hold UTF-8: no lone surrogates.
_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)

#: Authorities that name a service (so a request is routed and its response recorded)...
_ROUTED = (
    "mydb.com",
    "mydb.com:80",
    "MyDB.Com.",
    "mydb.com.:80",
    "other.com:8080",
    "OTHER.com:8080",
    "other.com",
    "dns.example.com",
    "dns.example.com:80",
)
#: ... and near misses.
_NEAR = (
    "mydb.com:443",
    "mydb.com:",
    "mydb.com:080",
    "mydb.com:80:80",
    "mydb.com:\u00b2",
    "mydb.com:\uff18\uff10",
    "mydb.com:" + "9" * 4301,
    "[::1]:80",
    "10.0.0.1:443",
    "*",
    "*.com",
    ":80",
    "",
)


_edits = st.integers(1, 3)
_places = st.integers(0, 1 << 16)
_edit_kinds = st.sampled_from(["insert", "delete", "replace"])
_edit_chars = st.one_of(st.sampled_from(".:[]*0189mM"), st.characters(codec="utf-8"))
_near_authorities = st.sampled_from(_ROUTED)


@st.composite
def _mutated_authority(draw: st.DrawFn) -> str:
    """An authority of a service with a few characters inserted, deleted or replaced."""
    chars = list(draw(_near_authorities))
    for _ in range(draw(_edits)):
        where = draw(_places) % (len(chars) + 1)
        edit, char = draw(_edit_kinds), draw(_edit_chars)
        if edit == "insert":
            chars.insert(where, char)
        elif where < len(chars):
            chars[where : where + 1] = [] if edit == "delete" else [char]
    return "".join(chars)


_routed = st.sampled_from(_ROUTED)
_authorities = st.one_of(
    _routed,
    _routed,
    _routed,
    _routed,
    st.sampled_from(_NEAR),
    _mutated_authority(),
    st.integers(1_000, 70_000).map(lambda n: "m" * n + ".com"),
    _text,
)
_header_keys = st.one_of(
    st.sampled_from([":authority", ":path", ":method", "host", ":AUTHORITY", "x-extproc", ""]),
    _text,
)


# Every strategy is built once, here: building one inside a draw costs more than the draw.
_where = st.sampled_from(["raw", "raw", "value", "both", "bytes"])
_raw_bytes = st.binary(max_size=40)
_positions = st.integers(0, 4)
_repeats = st.sampled_from([1, 1, 1, 0, 2])
_tenths = st.integers(0, 9)
_sixths = st.integers(0, 5)


@st.composite
def _header(draw: st.DrawFn, key: st.SearchStrategy[str], value: st.SearchStrategy[str]) -> Any:
    """One header: in ``raw_value`` (Envoy 1.40), in ``value``, in both, or raw bytes."""
    name, text = draw(key), draw(value)
    where = draw(_where)
    if where == "raw":
        return base_pb2.HeaderValue(key=name, raw_value=text.encode())
    if where == "value":
        return base_pb2.HeaderValue(key=name, value=text)
    if where == "both":
        return base_pb2.HeaderValue(key=name, value=draw(_text), raw_value=text.encode())
    return base_pb2.HeaderValue(key=name, raw_value=draw(_raw_bytes))


_other_headers = st.lists(_header(_header_keys, _text), max_size=4)


@st.composite
def _header_map(draw: st.DrawFn, special: st.SearchStrategy[Any]) -> Any:
    """Other headers and ``special`` (``:authority``, ``:status``) absent, once or twice."""
    headers = draw(_other_headers)
    for _ in range(draw(_repeats)):
        headers.insert(min(draw(_positions), len(headers)), draw(special))
    return base_pb2.HeaderMap(headers=headers)


_statuses = st.one_of(
    st.sampled_from(["200", "503", "502", "504", "429", "404", "100"]),
    st.sampled_from(["", "0", "-1", "5o3", "1e3", "0503", "\u00b2", "\u0665\u0660\u0663"]),
    st.integers(4301, 4400).map(lambda n: "5" * n),
    st.integers(0, 999).map(str),
    _text,
)
_authority_headers = _header_map(_header(st.just(":authority"), _authorities))
_status_headers = _header_map(_header(st.just(":status"), _statuses))
_trailer_headers = _header_map(_header(st.just("grpc-status"), _text))

_numbers = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 0x20, 0x10, 0x4, 0x80]),
    st.sampled_from([2.0**63, 1e300, -1.0, 0.5, float("nan"), float("inf"), float("-inf")]),
    st.integers(-(2**70), 2**70).map(float),
    st.floats(),
)
_floats = st.floats()
_booleans = st.booleans()
_strings = {
    "upstream.address": st.sampled_from(world.ALL_HOSTS + world.FOREIGN_HOSTS),
    "response.code_details": st.sampled_from(
        ["via_upstream", "upstream_reset_before_response_started{connection_failure}", ""]
    ),
}
_RIGHT_KIND = {name: "string" if name in _strings else "number" for name in _ATTRIBUTE_NAMES}
_value_kinds = {
    name: st.sampled_from([kind, kind, kind, "number", "string", "bool", "null", "list"])
    for name, kind in _RIGHT_KIND.items()
}
_string_values = {
    name: st.one_of(choices, choices, _text)
    for name in _ATTRIBUTE_NAMES
    for choices in [_strings.get(name, st.sampled_from(["1", "2", "NaN"]))]
}


@st.composite
def _struct_value(draw: st.DrawFn, name: str) -> Any:
    """An attribute value: mostly of its right type, else of any type."""
    value = struct_pb2.Value()
    kind = draw(_value_kinds[name])
    if kind == "number":
        value.number_value = draw(_numbers)
    elif kind == "string":
        value.string_value = draw(_string_values[name])
    elif kind == "bool":
        value.bool_value = draw(_booleans)
    elif kind == "null":
        value.null_value = 0
    else:
        value.list_value.values.add().number_value = draw(_floats)
    return value


_struct_values = {name: _struct_value(name) for name in _ATTRIBUTE_NAMES}
_namespaces = st.sampled_from([_ATTRIBUTES, _ATTRIBUTES, _ATTRIBUTES, "envoy.other", ""])


def _attributes(draw: st.DrawFn, message: Any) -> None:
    """Fill the response attributes Envoy sends, each present or not, maybe misplaced."""
    fields = message.attributes[draw(_namespaces)].fields
    for name in _ATTRIBUTE_NAMES:
        if draw(_sixths) > 0:
            fields[name].CopyFrom(draw(_struct_values[name]))
    if draw(_tenths) == 0:
        fields[draw(_text)].string_value = draw(_text)


@st.composite
def _request_headers(draw: st.DrawFn) -> Any:
    message = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=draw(_authority_headers), end_of_stream=draw(_booleans)
        )
    )
    if draw(_tenths) == 0:
        _attributes(draw, message)
    return message


@st.composite
def _response_headers(draw: st.DrawFn) -> Any:
    message = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=draw(_status_headers), end_of_stream=draw(_booleans)
        )
    )
    _attributes(draw, message)
    return message


_bodies = st.binary(max_size=64)


@st.composite
def _body(draw: st.DrawFn, kind: str) -> Any:
    body = pb.HttpBody(body=draw(_bodies), end_of_stream=draw(_booleans))
    return pb.ProcessingRequest(**{kind: body})


@st.composite
def _trailers(draw: st.DrawFn, kind: str) -> Any:
    return pb.ProcessingRequest(**{kind: pb.HttpTrailers(trailers=draw(_trailer_headers))})


_lua_statuses = st.sampled_from([200, 404, 429, 500, 502, 503, 504])


@st.composite
def _envoy_response(draw: st.DrawFn) -> Any:
    """Response headers as Envoy sends them (``extproc.testing``), any attribute values."""
    return response_headers(
        draw(_lua_statuses),
        code_details=draw(_strings["response.code_details"]),
        flags=draw(_numbers),
        attempts=draw(_numbers),
        upstream=draw(_strings["upstream.address"]),
    )


# Half of them well formed, so most streams get as far as an outcome.
_requests = st.one_of(_routed.map(request_headers), _request_headers())
_responses = st.one_of(_envoy_response(), _response_headers())
_request_bodies = _body("request_body")
_response_ends = st.one_of(_body("response_body"), _trailers("response_trailers"))
_any_message = st.one_of(
    _requests,
    _responses,
    _request_bodies,
    _body("response_body"),
    _trailers("request_trailers"),
    _trailers("response_trailers"),
    st.just(pb.ProcessingRequest()),
)


@st.composite
def _envoy_order(draw: st.DrawFn) -> list[Any]:
    """Envoy's order: request headers, maybe bodies, response headers, maybe the rest."""
    messages = [draw(_requests)]
    if draw(_booleans):
        messages.append(draw(_request_bodies))
    messages.append(draw(_responses))
    if draw(_booleans):
        messages.append(draw(_response_ends))
    return messages


_orders = _envoy_order()
_changes = st.sampled_from(["repeat", "swap", "drop"])


@st.composite
def _disorder(draw: st.DrawFn) -> list[Any]:
    """Envoy's order with one message repeated, two swapped or one left out."""
    messages = draw(_orders)
    i, j = (draw(_places) % len(messages) for _ in range(2))
    change = draw(_changes)
    if change == "repeat":
        messages.insert(j, messages[i])
    elif change == "swap":
        messages[i], messages[j] = messages[j], messages[i]
    else:
        del messages[i]
    return messages


_streams = st.lists(
    st.tuples(
        st.one_of(_orders, _orders, _disorder(), st.lists(_any_message, max_size=6)),
        st.one_of(st.none(), st.none(), st.integers(1, 3)),  # answers read before a drop
        st.sampled_from([0.0, 0.0, 0.5, 2.0]),  # seconds before the stream
    ),
    min_size=1,
    max_size=6,
)

# -- checks ----------------------------------------------------------------------------

_ANSWER_KINDS = {
    "request_headers": {"request_headers", "immediate_response"},
    "response_headers": {"response_headers"},
    "request_body": {"request_body"},
    "response_body": {"response_body"},
    "request_trailers": {"request_trailers"},
    "response_trailers": {"response_trailers"},
}


def _authority(message: Any) -> str:
    """The authority a request names: the first ``:authority`` (``raw_value`` first)."""
    for header in message.request_headers.headers.headers:
        if header.key == ":authority":
            return str(header.raw_value.decode("latin-1") or header.value)
    return ""


def _views(table: ServiceTable, now: float) -> dict[str, list[HostView]]:
    return {name: cluster.hosts(now) for name, cluster in table.clusters.items()}


async def _drive(
    servicer: ExternalProcessor, messages: Sequence[Any], cut: int | None
) -> list[Any]:
    """Run one stream; ``cut``: Envoy drops it after that many answers."""

    async def requests() -> AsyncIterator[Any]:
        for message in messages:
            yield message

    stream = servicer.Process(requests(), None)
    answers: list[Any] = []
    try:
        async for answer in stream:
            answers.append(answer)
            if cut is not None and len(answers) >= cut:
                break
    finally:
        await stream.aclose()
    return answers


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


def _check_answers(
    table: ServiceTable, messages: Sequence[Any], answers: Sequence[Any], cut: int | None
) -> None:
    assert len(answers) == (len(messages) if cut is None else min(cut, len(messages)))
    for message, answer in zip(messages, answers, strict=False):
        kind = message.WhichOneof("request")
        if kind is None:
            continue  # Envoy always sets one; any single answer will do
        assert answer.WhichOneof("response") in _ANSWER_KINDS[kind]
        if kind != "request_headers":
            assert routed_host(answer) is None
            continue
        cluster = table.lookup(_authority(message))
        host = routed_host(answer)
        if cluster is None:
            assert answer.immediate_response.status.code == 404
            assert host is None
        elif host is None:
            assert answer.immediate_response.status.code == 503  # no healthy upstream
        else:
            assert host in world.HOSTS[cluster.service.cluster_name], (
                f"routed to {host!r}, not a host of {cluster.service.cluster_name}"
            )


def _touched(table: ServiceTable, messages: Sequence[Any]) -> set[str]:
    """The clusters the stream's request headers name."""
    clusters: list[ClusterState | None] = [
        table.lookup(_authority(m))
        for m in messages
        if m.WhichOneof("request") == "request_headers"
    ]
    return {c.service.cluster_name for c in clusters if c is not None}


@given(streams=_streams)
def test_no_message_sequence_escapes_the_stream_or_routes_outside_the_service(
    runner: asyncio.Runner, streams: list[tuple[list[Any], int | None, float]]
) -> None:
    table, clock = world.build()
    metrics = Metrics(lambda: table, clock.now)
    servicer = ExternalProcessor(lambda: table, clock.now, metrics=metrics)
    addresses: set[str] = set(world.ALL_HOSTS + world.FOREIGN_HOSTS)
    for messages, cut, wait_s in streams:
        now = clock.advance(wait_s)
        before = _views(table, now)
        with structlog.testing.capture_logs() as logs:
            answers = runner.run(_drive(servicer, messages, cut))
        assert [entry for entry in logs if entry["log_level"] in ("error", "critical")] == []
        _check_answers(table, messages, answers, cut)
        after = _views(table, now)
        for name in set(table.clusters) - _touched(table, messages):
            assert after[name] == before[name], f"{name} changed by a stream not for it"
        assert {n: {v.address for v in views} for n, views in after.items()} == world.HOSTS
        assert world.active_requests(table, now) == dict.fromkeys(
            world.active_requests(table, now), 0
        ), "a stream ended with a request still active"
        for message in messages:
            if message.WhichOneof("request") == "response_headers":
                for namespace in message.attributes.values():
                    address = namespace.fields.get("upstream.address")
                    if address is not None:
                        addresses.add(address.string_value)
    for name, hosts in world.HOSTS.items():
        for address in addresses - hosts:
            assert not any(metrics.host_stats(name, address).values()), (
                f"an outcome counted for {address!r}, not a host of {name}"
            )


# -- through a real grpc.aio server ------------------------------------------------------

_GRPC_SETTINGS = settings(
    max_examples=max(20, settings.default.max_examples // 10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


class _Server:
    """The servicer on a grpc.aio server on 127.0.0.1:0, and a raw-bytes client of it."""

    def __init__(self) -> None:
        self.table, self.clock = world.build()
        self.servicer = ExternalProcessor(lambda: self.table, self.clock.now)

    async def start(self) -> None:
        self.server = grpc.aio.server()
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        # No serializers: the frames go out as given, ProcessingRequest or not.
        self.process = self.channel.stream_stream(_PROCESS)

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(0)


@pytest.fixture(scope="module")
def grpc_server(runner: asyncio.Runner) -> Iterator[_Server]:
    server = _Server()
    runner.run(server.start())
    yield server
    runner.run(server.stop())


async def _collect(call: Any) -> list[bytes]:
    try:
        return [bytes(answer) async for answer in call]
    except grpc.aio.AioRpcError:
        return []


_frames = st.lists(
    st.one_of(
        _any_message.map(lambda m: m.SerializeToString()),
        st.binary(max_size=100),
        st.just(b"\xff" * 10),
    ),
    max_size=5,
)


@_GRPC_SETTINGS
@given(frames=_frames)
def test_frames_that_are_not_processing_requests_leave_the_server_answering(
    runner: asyncio.Runner, grpc_server: _Server, frames: list[bytes]
) -> None:
    async def exchange() -> tuple[grpc.StatusCode, int, str | None]:
        call = grpc_server.process(iter(frames), timeout=10)
        answers = await _collect(call)
        good = grpc_server.process(
            iter(
                [
                    request_headers("mydb.com").SerializeToString(),
                    response_headers(200).SerializeToString(),
                ]
            ),
            timeout=10,
        )
        routed = [pb.ProcessingResponse.FromString(a) for a in await _collect(good)]
        return await call.code(), len(answers), routed_host(routed[0]) if routed else None

    code, answered, host = runner.run(exchange())
    # A frame that does not parse ends its stream with an error, never the server.
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    assert answered <= len(frames)
    assert host in world.HOSTS[world.CLUSTER_NAMES[0]]


# -- what the fuzzing found, kept as plain tests ---------------------------------------


def _stream(
    runner: asyncio.Runner, messages: Sequence[Any]
) -> tuple[list[Any], list[dict[str, Any]], ServiceTable, Metrics]:
    """One stream on a fresh servicer: its answers, its error logs, the table, the metrics."""
    table, clock = world.build()
    metrics = Metrics(lambda: table, clock.now)
    servicer = ExternalProcessor(lambda: table, clock.now, metrics=metrics)
    with structlog.testing.capture_logs() as logs:
        answers = runner.run(_drive(servicer, messages, None))
    assert world.active_requests(table, clock.now()) == dict.fromkeys(
        world.active_requests(table, clock.now()), 0
    ), "a stream ended with a request still active"
    return answers, [e for e in logs if e["log_level"] == "error"], table, metrics


def _odd_response(attribute: str, value: float) -> Any:
    message = response_headers(503, code_details="upstream_reset_before_response_started")
    message.attributes[_ATTRIBUTES].fields[attribute].number_value = value
    return message


def _status_response(status: bytes) -> Any:
    message = response_headers(200)
    message.response_headers.headers.headers[0].raw_value = status
    return message


@pytest.mark.parametrize(
    "message",
    [
        _odd_response("upstream.request_attempt_count", float("nan")),
        _odd_response("upstream.request_attempt_count", float("inf")),
        _odd_response("upstream.request_attempt_count", 2.0**63),
        _odd_response("upstream.request_attempt_count", -1.0),
        _odd_response("response.flags", float("nan")),
        _odd_response("response.flags", float("-inf")),
        _status_response(b"\xb2"),  # latin-1 for "\u00b2", which str.isdigit accepts
        _status_response(b"5" * 4301),
    ],
    ids=[
        "attempts-nan",
        "attempts-inf",
        "attempts-2**63",
        "attempts-negative",
        "flags-nan",
        "flags-minus-inf",
        "status-superscript-two",
        "status-4301-digits",
    ],
)
def test_response_attributes_envoy_never_sends_are_answered_without_an_error(
    runner: asyncio.Runner, message: Any
) -> None:
    answers, errors, _, _ = _stream(runner, [request_headers("mydb.com"), message])
    assert errors == []
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "response_headers"]


def test_an_upstream_address_outside_the_service_counts_no_outcome(
    runner: asyncio.Runner,
) -> None:
    stranger = "10.9.9.9:443"
    answers, errors, _, metrics = _stream(
        runner, [request_headers("mydb.com"), response_headers(200, attempts=2, upstream=stranger)]
    )
    assert errors == []
    assert routed_host(answers[0]) in world.HOSTS[world.CLUSTER_NAMES[0]]
    assert not any(metrics.host_stats(world.CLUSTER_NAMES[0], stranger).values())


@pytest.mark.parametrize(
    "second", ["mydb.com", "other.com:8080", "nowhere.example"], ids=["same", "other", "unknown"]
)
def test_a_second_request_headers_on_one_stream_leaves_no_active_request(
    runner: asyncio.Runner, second: str
) -> None:
    _, errors, _, _ = _stream(runner, [request_headers("mydb.com"), request_headers(second)])
    assert errors == []


@pytest.mark.parametrize(
    "authority",
    ["mydb.com:\u00b2", "mydb.com:\u00b9", "mydb.com:" + "8" * 4301],
    ids=["superscript-two", "superscript-one", "4301-digits"],
)
def test_an_authority_port_of_other_digits_is_no_service(
    runner: asyncio.Runner, authority: str
) -> None:
    message = request_headers("mydb.com")
    message.request_headers.headers.headers[0].raw_value = authority.encode("latin-1", "replace")
    message.request_headers.headers.headers[0].value = authority
    answers, errors, _, _ = _stream(runner, [message])
    assert errors == []
    assert answers[0].immediate_response.status.code == 404
