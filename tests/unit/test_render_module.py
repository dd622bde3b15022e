"""The module path's bootstrap: the module filter on the lua path's routes and clusters."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Final

import pytest

from extproc.istio import load_policy
from extproc.render.bootstrap import render_bootstrap
from extproc.settings import Settings
from extproc.wire import (
    MODULE_ATTEMPT_LOGGER,
    MODULE_FILTER_NAME,
    MODULE_NAME,
    MODULE_SOCKET,
    SYNC_CLUSTER,
    DataPath,
)

SEED: Final = Path(__file__).resolve().parents[1] / "fixtures" / "seed"
POLICY: Final = load_policy(SEED / "step2-outlier.yaml")
SOCKETS: Final = Path("/run/extproc")
DYNAMIC_MODULES: Final = "envoy.filters.http.dynamic_modules"


def _render(data_path: DataPath) -> dict[str, Any]:
    return render_bootstrap(POLICY, Settings(socket_dir=SOCKETS, data_path=data_path))


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _clusters(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def test_the_module_filter_names_the_module_and_the_services_socket() -> None:
    [module, router] = _hcm(_render(DataPath.MODULE))["http_filters"]
    assert module["name"] == DYNAMIC_MODULES
    config = module["typed_config"]
    assert config["@type"].endswith(
        "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
    )
    assert config["dynamic_module_config"] == {"name": MODULE_NAME, "do_not_close": True}
    assert config["filter_name"] == MODULE_FILTER_NAME
    assert config["filter_config"] == {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": str(SOCKETS / MODULE_SOCKET),
    }
    assert router["name"] == "envoy.filters.http.router"


def test_the_routers_upstream_log_hands_every_attempt_to_the_module() -> None:
    [_, router] = _hcm(_render(DataPath.MODULE))["http_filters"]
    [log] = router["typed_config"]["upstream_log"]
    assert log["name"] == "envoy.access_loggers.dynamic_modules"
    assert log["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.dynamic_modules.v3"
        ".DynamicModuleAccessLog",
        "dynamic_module_config": {"name": MODULE_NAME, "do_not_close": True},
        "logger_name": MODULE_ATTEMPT_LOGGER,
    }
    # Logged as each attempt ends, not also when its connection is ready.
    assert "upstream_log_options" not in router["typed_config"]


def test_the_module_path_has_no_lua_no_sync_cluster_and_no_reset_log() -> None:
    bootstrap = _render(DataPath.MODULE)
    hcm = _hcm(bootstrap)
    assert "lua" not in str(hcm["http_filters"])
    assert "local_reply_config" not in hcm
    # The module reports a reset after the response started itself.
    assert "access_log" not in hcm
    assert SYNC_CLUSTER not in _clusters(bootstrap)


def _without_lua(route: dict[str, Any]) -> dict[str, Any]:
    """A lua route without what only the Lua script reads (its metadata and header)."""
    return {k: v for k, v in route.items() if k not in ("metadata", "response_headers_to_add")}


def test_routes_and_service_clusters_are_the_lua_paths() -> None:
    module, lua = _render(DataPath.MODULE), _render(DataPath.LUA)
    module_hosts = _hcm(module)["route_config"]["virtual_hosts"]
    lua_hosts = _hcm(lua)["route_config"]["virtual_hosts"]
    for ours, theirs in zip(module_hosts[:-1], lua_hosts[:-1], strict=True):
        assert ours["routes"] == [_without_lua(route) for route in theirs["routes"]]
    for name, cluster in _clusters(module).items():
        assert cluster == _clusters(lua)[name]


def test_the_catch_all_turns_the_module_filter_off() -> None:
    catch_all = _hcm(_render(DataPath.MODULE))["route_config"]["virtual_hosts"][-1]
    [route] = catch_all["routes"]
    assert route["direct_response"]["status"] == 404
    assert route["typed_per_filter_config"] == {
        DYNAMIC_MODULES: {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": True,
        }
    }


@pytest.mark.parametrize("data_path", [DataPath.LUA, DataPath.EXT_PROC])
def test_the_other_paths_keep_their_filter_and_reset_log(data_path: DataPath) -> None:
    hcm = _hcm(_render(data_path))
    assert DYNAMIC_MODULES not in str(hcm)
    assert "dynamic_modules" not in str(hcm)
    assert len(hcm["access_log"]) == 1
    assert "upstream_log" not in hcm["http_filters"][-1]["typed_config"]


def test_the_module_path_without_a_socket_directory_is_refused() -> None:
    settings = dataclasses.replace(Settings(), data_path=DataPath.MODULE)
    with pytest.raises(ValueError, match="socket directory"):
        render_bootstrap(POLICY, settings)
