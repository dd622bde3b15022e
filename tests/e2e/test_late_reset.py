"""An endpoint that resets after its response started is ejected, as Istio's Envoy ejects it.

us-east1 sends a 200 head and half the body, then RST (the stand-in's ``Mode.RESET``). The
lua and ext_proc paths see only the head; Envoy's access log tells the service of the reset
(``extproc/server/access_log.py``). The module sees the reset at stream completion and
reports it itself (its path has no such log). Istio's Envoy ejects us-east1 on the first such reset
and fails that one request (``tests/differential/test_late_reset.py``).

A malformed answer head is the same reset one step earlier (``protocol_error`` before the
response started): Envoy answers 502 and counts a local-origin failure, which both data
paths read from the reply's response flags (UPE).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from extproc.core.policy import Locality, Workload
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder, Mode
from extproc.sandbox.client import Reply, get
from extproc.server.app import ServiceApp
from extproc.settings import HostPort, Settings
from extproc.wire import LATE_UPSTREAM_RESET, SECRET_HEADER, DataPath, reset_log_name

from .conftest import EAST, WEST, Region, StackFactory, envoy_stat, serve_with_envoy
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

SECRET = "s3cret-token-for-tests-0123456789"
CLUSTER = "outbound|80||mydb.com"
#: The stand-in resets 50 ms after the head; requests this far apart do not overlap.
SPACING_S = 0.1
#: Entries the reset access log let through its filter (Envoy's gRPC access log stat).
LOGS_WRITTEN = "access_logs.grpc_access_log.logs_written"


def whole(reply: Reply) -> str:
    """Who served a reply that arrived whole, else ``<failed>``."""
    length = reply.headers.get("content-length")
    if reply.status == 200 and length is not None and int(length) == len(reply.body.encode()):
        return reply.served_by
    return "<failed>"


async def spaced(listen: tuple[str, int], count: int) -> list[str]:
    served = []
    for _ in range(count):
        served.append(whole(await get(listen, "mydb.com", timeout_s=5)))
        await asyncio.sleep(SPACING_S)
    return served


async def _malformed_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request with a head Envoy's codec rejects (a non-numeric length)."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\nhello")
        await writer.drain()
    writer.close()


def ejected(app: ServiceApp) -> set[str]:
    return {view.address for view in app.table.clusters[CLUSTER].hosts(app.now()) if view.ejected}


async def test_a_region_that_resets_mid_response_is_ejected_after_the_first_reset(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port, base="30s"))
    assert await spaced(stack.settings.listen, 3) == [EAST] * 3
    regions["east"].servers[0].set_mode(Mode.RESET)

    served = await spaced(stack.settings.listen, 10)

    # One failed request, as on Istio's Envoy; then us-west serves.
    assert served == ["<failed>"] + [WEST] * 9
    assert ejected(stack.app) == {f"127.0.0.11:{regions['east'].port}"}


async def test_after_the_service_restarts_envoy_sends_late_resets_to_the_new_one(
    regions: dict[str, Region], start_stack: StackFactory, dns: DnsResponder
) -> None:
    text = seed(regions["east"].port, regions["west"].port, base="30s")
    stack = await start_stack(text)
    east = regions["east"].servers[0]
    east.set_mode(Mode.RESET)
    assert (await spaced(stack.settings.listen, 2)) == ["<failed>", WEST]  # a log stream is open
    east.set_mode(Mode.HEALTHY)
    old = stack.app
    await old.stop()  # the stream breaks; a new service starts with us-east1 not ejected
    new = ServiceApp(
        load_policy_text(text, "test.yaml"),
        Settings(
            socket_dir=old.settings.socket_dir,
            data_path=old.settings.data_path,
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            workload=Workload(Locality.parse("us-east1")),
        ),
    )
    await new.start()
    stack.app = new
    # Envoy's EDS stream reconnects with a growing backoff while the old service drains
    # (its shutdown grace), so the new service's us-east1 may take some seconds to arrive.
    for _ in range(200):
        if whole(await get(stack.settings.listen, "mydb.com")) == EAST:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("no request reached us-east1 through the new service within 20 s")
    await asyncio.sleep(0.3)  # every Lua worker on the new service's table

    east.set_mode(Mode.RESET)
    served = await spaced(stack.settings.listen, 6)

    assert served == ["<failed>"] + [WEST] * 5
    assert ejected(new) == {f"127.0.0.11:{regions['east'].port}"}


@pytest.mark.parametrize(
    "data_path", [DataPath.LUA, DataPath.EXT_PROC], ids=["lua", "ext_proc"], indirect=True
)
async def test_only_a_reset_after_the_response_started_is_sent_to_the_service(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    # Envoy's filter drops every other request: the data paths count those themselves.
    stack = await start_stack(seed(regions["east"].port, regions["west"].port, base="30s"))
    east, west = regions["east"].servers[0], regions["west"].servers[0]
    assert await spaced(stack.settings.listen, 5) == [EAST] * 5
    east.set_mode(Mode.FAIL_503)  # an upstream 503: ejects us-east1
    assert (await get(stack.settings.listen, "mydb.com")).status == 503
    east.set_mode(Mode.HEALTHY)
    west.set_mode(Mode.REFUSE)  # a local reply with a reset flag (UF), before any response
    assert (await get(stack.settings.listen, "mydb.com")).status == 503
    assert await envoy_stat(stack, LOGS_WRITTEN) == 0

    west.set_mode(Mode.RESET)
    await spaced(stack.settings.listen, 2)

    assert await envoy_stat(stack, LOGS_WRITTEN) >= 1


async def test_a_reset_log_reaches_serve_over_tcp_with_the_secret(
    tmp_path: Path, data_path: DataPath, regions: dict[str, Region], dns: DnsResponder
) -> None:
    # extproc serve over TCP: the access log carries the secret as gRPC metadata.
    text = seed(regions["east"].port, regions["west"].port, base="30s")
    app, envoy, listen = await serve_with_envoy(tmp_path, text, data_path, dns, SECRET)
    try:
        for _ in range(100):
            if whole(await get(listen, "mydb.com")) == EAST:
                break
            await asyncio.sleep(0.1)
        regions["east"].servers[0].set_mode(Mode.RESET)
        assert await spaced(listen, 6) == ["<failed>"] + [WEST] * 5
        assert ejected(app) == {f"127.0.0.11:{regions['east'].port}"}
    finally:
        await envoy.stop()
        await app.stop()


@pytest.mark.parametrize(
    "split",
    [False, True],
    ids=["5xx", "local-origin"],
)
async def test_a_region_that_answers_a_malformed_head_is_ejected_after_the_first_502(
    regions: dict[str, Region], start_stack: StackFactory, dns: DnsResponder, split: bool
) -> None:
    # Measured on the reference, with consecutive5xxErrors: 1 and with only
    # consecutiveLocalOriginFailures: 1 in split mode: 502 (flags UPE,
    # upstream_reset_before_response_started{protocol_error}), us-east1 ejected, then
    # us-west. us-east1's name moves to a server that breaks the protocol, on a loopback
    # address of its own.
    server = await asyncio.start_server(_malformed_head, "127.0.0.13", 0)
    port = server.sockets[0].getsockname()[1]
    dns.set_records(EAST, ["127.0.0.13"])
    text = seed(port, regions["west"].port, base="30s")
    if split:
        text = text.replace(
            "consecutive5xxErrors: 1",
            "consecutive5xxErrors: 0\n      splitExternalLocalOriginErrors: true\n"
            "      consecutiveLocalOriginFailures: 1",
        )
    try:
        stack = await start_stack(text)
        replies = [await get(stack.settings.listen, "mydb.com") for _ in range(6)]
        assert [r.status for r in replies] == [502] + [200] * 5
        assert [r.served_by for r in replies[1:]] == [WEST] * 5
        assert ejected(stack.app) == {f"127.0.0.13:{port}"}
    finally:
        server.close()
        await server.wait_closed()


def _forged_reset(host: str) -> als_pb2.StreamAccessLogsMessage:
    ip, _, port = host.rpartition(":")
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.common_properties.upstream_cluster = CLUSTER
    entry.common_properties.upstream_remote_address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=ip, port_value=int(port))
        )
    )
    entry.response.response_code.value = 200
    entry.response.response_code_details = LATE_UPSTREAM_RESET + "{protocol_error}"
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = reset_log_name(DataPath.EXT_PROC)
    message.http_logs.log_entry.append(entry)
    return message


@pytest.mark.parametrize("secret", [None, "wrong-secret-but-long-enough"], ids=["none", "wrong"])
async def test_a_forged_reset_log_without_the_secret_ejects_nothing(
    regions: dict[str, Region], dns: DnsResponder, secret: str | None
) -> None:
    app = ServiceApp(
        load_policy_text(seed(regions["east"].port, regions["west"].port), "test.yaml"),
        Settings(
            grpc=HostPort("127.0.0.1", 0),
            sync_port=0,
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            secret=SECRET,
            workload=Workload(Locality.parse("us-east1")),
        ),
        rng=random.Random(1),
    )
    await app.start()
    east = f"127.0.0.11:{regions['east'].port}"
    try:
        metadata = () if secret is None else ((SECRET_HEADER, secret),)
        async with grpc.aio.insecure_channel(app.grpc_target) as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.StreamAccessLogs(iter([_forged_reset(east)]), metadata=metadata)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert ejected(app) == set()
            # The same entry with the secret is taken: the refusal was the secret's doing.
            await stub.StreamAccessLogs(
                iter([_forged_reset(east)]), metadata=((SECRET_HEADER, SECRET),)
            )
        assert ejected(app) == {east}
    finally:
        await app.stop()
