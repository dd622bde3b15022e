"""The benchmark's configs (``bench/bench.py``): every variant that reads the Istio YAML does
the same failover work on it, the native Envoy's config is pilot's, and the reports divide by
the right baseline."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from extproc.core.locality import endpoint_priorities
from extproc.core.policy import Locality, Workload
from extproc.errors import StartupError
from extproc.istio import load_policy_text


def _load_bench() -> ModuleType:
    # bench/ is a directory of scripts, not a package: load the script by its path.
    path = Path(__file__).resolve().parents[2] / "bench" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_bench", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
PORTS = (18001, 18002)
EAST = f"{bench.UPSTREAM_HOST}:{PORTS[0]}"
WEST = f"{bench.UPSTREAM_HOST}:{PORTS[1]}"


def _native_priorities(bootstrap: dict[str, Any]) -> dict[str, int]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    return {
        f"{lb['endpoint']['address']['socket_address']['address']}:"
        f"{lb['endpoint']['address']['socket_address']['port_value']}": group["priority"]
        for group in cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    }


def test_extproc_puts_the_client_locality_at_priority_0_and_the_failover_at_1() -> None:
    policy = load_policy_text(bench.service_yaml(PORTS))
    (service,) = policy.services
    workload = Workload(locality=Locality.parse(bench.LOCALITY))
    by_host = {
        f"{e.address}:{e.port}": p
        for e, p in zip(service.endpoints, endpoint_priorities(service, workload), strict=True)
    }
    assert by_host == {EAST: 0, WEST: 1}
    assert service.outlier_detection is not None


def test_native_envoy_gets_the_same_priorities_and_istios_cluster_and_route() -> None:
    bootstrap = bench.istio_bootstrap(bench.service_yaml(PORTS), 10099)
    assert _native_priorities(bootstrap) == {EAST: 0, WEST: 1}
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["type"] == "STATIC"
    assert cluster["outlier_detection"]["consecutive_5xx"] == 5
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0.0}
    assert cluster["circuit_breakers"]["thresholds"][0]["max_retries"] == 4294967295
    (listener,) = bootstrap["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["retry_policy"]["num_retries"] == 2
    # Pilot leaves Envoy's default (SO_REUSEPORT on); extproc up turns it off.
    assert "enable_reuse_port" not in listener


def test_the_virtual_service_variant_gives_both_the_same_timeout_and_retries() -> None:
    yaml_text = bench.service_yaml(PORTS, virtual_service=True)
    (service,) = load_policy_text(yaml_text).services
    [route] = service.routes
    assert (route.timeout_s, route.retries and route.retries.num_retries) == (5.0, 3)
    bootstrap = bench.istio_bootstrap(yaml_text, 10099)
    (listener,) = bootstrap["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    action = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert action["timeout"] == "5s"
    assert action["retry_policy"]["num_retries"] == 3
    assert action["retry_policy"]["retriable_status_codes"] == [503]


def test_native_envoy_config_that_needs_dns_is_refused() -> None:
    dns_yaml = bench.service_yaml(PORTS).replace("resolution: STATIC", "resolution: DNS")
    with pytest.raises(StartupError, match="needs DNS"):
        bench.istio_bootstrap(dns_yaml, 10099)


def test_plain_envoy_keeps_envoys_listener_defaults() -> None:
    bootstrap = bench.plain_bootstrap(10099, PORTS[0])
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert "enable_reuse_port" not in listener
    assert "connection_balance_config" not in listener


def test_plain_envoy_without_reuse_port_takes_extproc_ups_listener_fields() -> None:
    bootstrap = bench.plain_bootstrap(10099, PORTS[0], reuse_port=False)
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["enable_reuse_port"] is False
    assert listener["connection_balance_config"] == {"exact_balance": {}}


def test_served_by_counts_requests_of_the_service_cluster_only() -> None:
    clusters = "\n".join(
        [
            f"outbound|80||bench.local::{EAST}::rq_total::990",
            f"outbound|80||bench.local::{WEST}::rq_total::10",
            f"outbound|80||bench.local::{EAST}::cx_active::16",
            "extproc_brain::127.0.0.1:9004::rq_total::600",
            f"bench::{EAST}::rq_total::5",
        ]
    )
    assert bench.served_by(clusters) == {EAST: 995, WEST: 10}


def test_ratios_divide_every_variant_by_istio_then_by_plain() -> None:
    summary = {
        16: {
            "istio": {"rps": 800.0},
            "plain": {"rps": 1000.0},
            "lua": {"rps": 600.0},
        }
    }
    by_base = bench.ratios(summary)
    assert list(by_base) == ["istio", "plain"]
    assert by_base["istio"] == {"istio": {16: 1.0}, "plain": {16: 1.25}, "lua": {16: 0.75}}
    assert by_base["plain"] == {"istio": {16: 0.8}, "plain": {16: 1.0}, "lua": {16: 0.6}}


def test_ratio_to_a_baseline_that_served_nothing_is_none() -> None:
    assert bench.ratio(500.0, 0.0) is None


def test_served_by_lists_the_priority_0_endpoint_first_with_its_locality() -> None:
    # Port A sorts after port B as text, so only the priority order puts it first.
    east, west = f"{bench.UPSTREAM_HOST}:50000", f"{bench.UPSTREAM_HOST}:40000"
    text = bench.format_served_by({"istio": {west: 0, east: 400}}, (50000, 40000))
    line = text.splitlines()[1]
    assert line.index(east) < line.index(west)
    assert f"{east} ({bench.LOCALITY}) 400 = 100.0 %" in line
    assert f"{west} ({bench.FAILOVER_LOCALITY}) 0 = 0.0 %" in line


def test_a_variant_subset_always_keeps_the_baselines_in_round_order() -> None:
    assert bench._parse_variants("lua") == ["istio", "plain", "lua"]
    assert bench._parse_variants("ext_proc,module") == ["istio", "plain", "module", "ext_proc"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown: wasm"):
        bench._parse_variants("lua,wasm")


def test_the_pacing_script_holds_the_offered_rate(tmp_path: Path) -> None:
    # 10 connections, 1,000 req/s: each connection waits 10 ms before its next request.
    script = bench.pacing_script(tmp_path, 1000, 10)
    assert script.read_text() == "function delay()\n  return 10\nend\n"


def test_the_paced_table_compares_p99_with_native_istio() -> None:
    def summary(p99_ms: float) -> dict[str, Any]:
        return {"rps": 998.0, "p50_ms": 1.0, "p99_ms": p99_ms, "cpu_us_per_request": {}}

    text = bench.format_paced({"istio": summary(2.0), "module": summary(2.25)}, 1000, 3)
    assert "paced at 1,000 req/s offered (medians of 3 rounds)" in text
    module_line = next(line for line in text.splitlines() if line.startswith("envoy + module"))
    assert "+0.25" in module_line


def _record(round_no: int, variant: str, rps: float, envoy_us: float = 80.0) -> Any:
    wrk = bench.WrkResult(int(rps), 1.0, rps, 1.0, 2.0, 0, 0)
    return bench.RunRecord(16, round_no, 0, variant, wrk, {}, {"envoy": envoy_us}, {}, {})


def test_paired_ratio_is_the_median_of_each_rounds_own_ratio() -> None:
    # The machine halves its speed in round 1: both variants drop, their ratio does not.
    records = [
        _record(0, "istio", 20_000),
        _record(0, "module", 19_000, 84.0),
        _record(1, "istio", 10_000),
        _record(1, "module", 9_600, 84.0),
        _record(2, "istio", 18_000),
        _record(2, "module", 17_400, 84.0),
        _record(3, "module", 5_000),
    ]
    rps = bench.paired_ratio(records, "module", "istio", 16)
    cpu = bench.paired_ratio(records, "module", "istio", 16, "envoy_cpu")
    assert rps == pytest.approx(0.96)  # 0.95, 0.96, 0.967; round 3 has no istio run
    assert cpu == pytest.approx(1.05)
    assert bench.paired_ratio(records, "module", "istio", 64) is None


def test_round_order_gives_every_variant_every_position_and_both_predecessors() -> None:
    variants = ["istio", "plain", "module", "lua", "ext_proc"]
    orders = [bench.round_order(variants, r) for r in range(2 * len(variants))]

    assert all(sorted(order) == sorted(variants) for order in orders)
    for key in variants:
        assert {order.index(key) for order in orders} == set(range(len(variants)))
    before_module = {order[order.index("module") - 1] for order in orders if order[0] != "module"}
    assert before_module == {"plain", "lua"}
