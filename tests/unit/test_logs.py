"""Logs: JSON for machines, console for people, one line per outlier event in Envoy's words."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from extproc.core.cluster import ClusterState
from extproc.core.outlier import AttemptResult
from extproc.core.policy import Locality, Workload
from extproc.server.logs import OutlierEventLog, configure_logging
from extproc.testing import FakeClock, endpoint, outlier, service

EAST = "127.0.0.11:80"
WEST = "127.0.0.12:80"
CLUSTER = "outbound|80||mydb.com"

#: envoy.data.cluster.v3.OutlierDetectionEvent's fields that apply to a consecutive-5xx event
#: (api/envoy/data/cluster/v3/outlier_detection_event.proto); timestamp is structlog's own.
ENVOY_EVENT_FIELDS = {
    "action",
    "type",
    "cluster_name",
    "upstream_url",
    "num_ejections",
    "enforced",
    "secs_since_last_action",
}


class FakeStderr(io.StringIO):
    """A stderr that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture
def stderr(request: pytest.FixtureRequest) -> Iterator[FakeStderr]:
    yield FakeStderr(tty=getattr(request, "param", False))
    structlog.reset_defaults()  # structlog's configuration is process-wide


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_logs_are_json_lines_when_stderr_is_not_a_terminal(stderr: FakeStderr) -> None:
    configure_logging("info", stream=stderr)
    structlog.get_logger("test").info("service.ready", grpc="127.0.0.1:9002")
    structlog.get_logger("test").debug("not.shown")
    [line] = _lines(stderr)
    record = json.loads(line)
    assert record["event"] == "service.ready"
    assert record["grpc"] == "127.0.0.1:9002"
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")


@pytest.mark.parametrize("stderr", [True], indirect=True)
def test_logs_are_console_lines_when_stderr_is_a_terminal(stderr: FakeStderr) -> None:
    configure_logging("info", stream=stderr)
    structlog.get_logger("test").info("service.ready", grpc="127.0.0.1:9002")
    [line] = _lines(stderr)
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert "service.ready" in line
    assert "grpc" in line
    assert "127.0.0.1:9002" in line


def test_json_logs_carry_exceptions_as_structured_tracebacks(stderr: FakeStderr) -> None:
    configure_logging("info", json=True, stream=stderr)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("test").exception("ext_proc.message_error")
    [line] = _lines(stderr)
    record = json.loads(line)
    assert record["exception"][0]["exc_type"] == "ValueError"
    assert record["exception"][0]["exc_value"] == "boom"


def _cluster(clock: FakeClock) -> ClusterState:
    svc = service(
        endpoints=[
            endpoint("127.0.0.11", "us-east1", port=80),
            endpoint("127.0.0.12", "us-west", port=80),
        ],
        outlier=outlier(consecutive_5xx_errors=1, interval_s=1.0, base_ejection_time_s=3.0),
    )
    return ClusterState(
        svc, Workload(Locality.parse("us-east1")), now=clock.now(), rng=random.Random(1)
    )


def _write_events(cluster: ClusterState, log: OutlierEventLog) -> None:
    for event in cluster.drain_events():
        log.write(event)


def test_a_real_ejection_and_unejection_are_one_json_line_each_in_envoys_field_names(
    stderr: FakeStderr,
) -> None:
    configure_logging("info", json=True, stream=stderr)
    clock = FakeClock(10.0)
    cluster = _cluster(clock)
    log = OutlierEventLog()

    cluster.record(EAST, AttemptResult.answer(503), clock.now())  # eject at t=10
    _write_events(cluster, log)
    cluster.advance(clock.advance(3.5))  # the sweep at t=13 un-ejects (3 s ejection)
    _write_events(cluster, log)
    cluster.record(EAST, AttemptResult.answer(503), clock.advance(4.5))  # ejected again at t=18
    _write_events(cluster, log)

    records = [json.loads(line) for line in _lines(stderr)]
    assert [r["event"] for r in records] == ["outlier.eject", "outlier.uneject", "outlier.eject"]
    first, unejected, again = records
    assert {k: first[k] for k in ENVOY_EVENT_FIELDS - {"secs_since_last_action"}} == {
        "action": "EJECT",
        "type": "CONSECUTIVE_5XX",
        "cluster_name": CLUSTER,
        "upstream_url": EAST,
        "num_ejections": 1,
        "enforced": True,
    }
    # Envoy leaves secs_since_last_action out when the host never had the other action.
    assert "secs_since_last_action" not in first
    assert unejected["action"] == "UNEJECT"
    assert unejected["secs_since_last_action"] == 3  # since the ejection at t=10
    assert again["num_ejections"] == 2
    assert again["secs_since_last_action"] == 5  # since the un-ejection at t=13
    assert set(again) >= ENVOY_EVENT_FIELDS


def test_a_refused_ejection_is_logged_as_not_enforced(stderr: FakeStderr) -> None:
    configure_logging("info", json=True, stream=stderr)
    clock = FakeClock()
    svc = service(
        endpoints=[endpoint("127.0.0.11", "us-east1", port=80)],
        outlier=outlier(max_ejection_percent=0, always_eject_one_host=False),
    )
    cluster = ClusterState(svc, Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1))
    log = OutlierEventLog()
    cluster.record(EAST, AttemptResult.answer(503), clock.now())
    _write_events(cluster, log)
    [record] = [json.loads(line) for line in _lines(stderr)]
    assert (record["event"], record["action"], record["enforced"]) == (
        "outlier.eject",
        "EJECT",
        False,
    )


def test_the_event_log_forgets_the_oldest_host_past_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("extproc.server.logs._MAX_REMEMBERED_HOSTS", 2)
    written: list[dict[str, Any]] = []

    class Recorder:
        def info(self, event: str, **fields: Any) -> None:
            written.append(fields)

    from extproc.core.outlier import OutlierAction, OutlierEjectionType, OutlierEvent

    CONSECUTIVE_5XX = OutlierEjectionType.CONSECUTIVE_5XX

    log = OutlierEventLog(Recorder())
    for host in ("a:1", "b:1", "c:1"):
        log.write(OutlierEvent(OutlierAction.EJECT, CLUSTER, host, CONSECUTIVE_5XX, 1, True, 0.0))
    for host in ("a:1", "c:1"):
        log.write(OutlierEvent(OutlierAction.UNEJECT, CLUSTER, host, CONSECUTIVE_5XX, 1, True, 2.0))
    assert "secs_since_last_action" not in written[-2]  # a:1 was forgotten
    assert written[-1]["secs_since_last_action"] == 2
