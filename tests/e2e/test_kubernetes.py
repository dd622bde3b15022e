"""deploy/kubernetes/, checked offline: no cluster runs on our machines.

1. ``kubectl kustomize`` (kubectl from the test dependencies) renders the base and the fleet
   overlay, and every object passes Kubernetes' own JSON schemas (``kubernetes-validate``,
   strict) for the current release and for the oldest one with native sidecars.
2. The Envoy bootstrap in the ConfigMap is the renderer's output, and Envoy accepts it with
   the module loaded; the Istio YAML is the seed's.
3. The pod is read as data for what a cluster would only show at run time: names, ports,
   paths and env that agree across containers, the renderer and the CLI; probes; limits;
   non-root and read-only; the service account's one permission.
4. The Redis component's own start script runs on a local redis-server: its one user may
   use the fleet's keys and channels and nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from extproc.demo import free_port
from extproc.istio import load_policy
from extproc.render.bootstrap import render_bootstrap
from extproc.server.envoy_process import validate_config
from extproc.server.stack import envoy_environment
from extproc.settings import HostPort, Settings
from extproc.wire import MODULE_SEARCH_PATH_VAR, DataPath
from tests.redis_server import needs_redis

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
FLEET = ROOT / "deploy" / "kubernetes-fleet"
KUBECTL = Path(sys.executable).parent / "kubectl"

#: The current release the schemas know, and the first with native sidecars on by default.
KUBERNETES_VERSIONS = (kubernetes_validate.latest_version(), "1.29.0")

RENDER_ARGS = (
    "--config",
    "deploy/kubernetes/mydb.yaml",
    "--listen",
    "127.0.0.1:80",
    "--socket-dir",
    "/run/extproc",
    "--envoy-admin",
    "127.0.0.1:9901",
    "--data-path",
    "module",
)
POD_SETTINGS = Settings(
    listen=HostPort("127.0.0.1", 80),
    socket_dir=Path("/run/extproc"),
    envoy_admin=HostPort("127.0.0.1", 9901),
    data_path=DataPath.MODULE,
)
HEADER = (
    f"# Rendered by `extproc render {' '.join(RENDER_ARGS)}`\n"
    "# -- do not edit by hand. The pod's Envoy: its listener and admin on the pod's loopback "
    "only;\n"
    "# it reaches the service over the sockets in /run/extproc (an emptyDir of the pod).\n"
    "# tests/e2e/test_kubernetes.py keeps it in sync and validates it with Envoy.\n"
)


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize path`` renders."""
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, Any]]:
    return kustomize(FLEET)


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [
        o
        for o in objects
        if o["kind"] == kind and o["metadata"]["name"].startswith(name)  # hashed names too
    ]
    return found


def pod_spec(objects: list[dict[str, Any]], name: str = "sleep") -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in containers(spec) if c["name"] == name]
    return found


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in spec["volumes"]}


# -- 1. kustomize renders it and Kubernetes' schemas accept every object -------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("layout", ["base", "fleet"])
def test_every_rendered_object_passes_kubernetes_schemas(
    layout: str, version: str, base: list[dict[str, Any]], fleet: list[dict[str, Any]]
) -> None:
    objects = base if layout == "base" else fleet
    kinds = sorted({o["kind"] for o in objects})
    assert {"Deployment", "ConfigMap", "ServiceAccount", "ClusterRole"} <= set(kinds)
    for o in objects:
        # Raises ValidationError naming the field; strict refuses unknown fields too.
        kubernetes_validate.validate(o, version, strict=True)


def test_the_schema_check_refuses_a_misspelt_field(base: list[dict[str, Any]]) -> None:
    # The check above would be worth nothing if it accepted anything.
    deployment = one(base, "Deployment", "sleep")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container(broken["spec"]["template"]["spec"], "extproc")["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_a_namespace_overlay_moves_the_role_bindings_subject_too(tmp_path: Path) -> None:
    shutil.copytree(BASE, tmp_path / "base")
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "namespace: shop\nresources: [base]\n"
    )
    objects = kustomize(tmp_path)
    [subject] = one(objects, "ClusterRoleBinding", "extproc-node-reader")["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": "extproc", "namespace": "shop"}
    assert one(objects, "Deployment", "sleep")["metadata"]["namespace"] == "shop"


# -- 2. The configs in the ConfigMaps ----------------------------------------------------------


def rendered_pod_envoy_config() -> str:
    bootstrap = render_bootstrap(load_policy(BASE / "mydb.yaml"), POD_SETTINGS)
    return HEADER + yaml.safe_dump(bootstrap, sort_keys=False)


def test_the_envoy_config_is_the_rendered_pod_config() -> None:
    rendered = rendered_pod_envoy_config()
    if os.environ.get("EXTPROC_UPDATE_GOLDEN") == "1":
        (BASE / "envoy.yaml").write_text(rendered)
    assert (BASE / "envoy.yaml").read_text() == rendered, (
        "deploy/kubernetes/envoy.yaml is stale: run with EXTPROC_UPDATE_GOLDEN=1 and review"
    )


def test_the_render_command_in_the_header_reproduces_the_envoy_config() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "--log-level", "error", "render", *RENDER_ARGS],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert HEADER + result.stdout == (BASE / "envoy.yaml").read_text()


def test_the_pods_envoy_config_passes_envoy_validate_with_the_module() -> None:
    assert "OK" in validate_config(BASE / "envoy.yaml", env=envoy_environment(POD_SETTINGS))


def test_the_config_maps_hold_the_files_and_the_istio_yaml_is_the_seeds(
    base: list[dict[str, Any]],
) -> None:
    istio = one(base, "ConfigMap", "extproc-istio-config")
    assert istio["data"] == {"mydb.yaml": (BASE / "mydb.yaml").read_text()}
    seed = list(yaml.safe_load_all((ROOT / "envoy" / "mydb.yaml").read_text()))
    assert list(yaml.safe_load_all((BASE / "mydb.yaml").read_text())) == seed
    envoy = one(base, "ConfigMap", "extproc-envoy-config")
    assert envoy["data"] == {"envoy.yaml": (BASE / "envoy.yaml").read_text()}


def test_the_istio_config_keeps_its_name_so_an_edit_is_a_live_reload(
    base: list[dict[str, Any]],
) -> None:
    # The kubelet updates a mounted ConfigMap in place (the ..data swap the service watches)
    # only if the name stays; a subPath mount would never see the update at all.
    spec = pod_spec(base)
    extproc = container(spec, "extproc")
    assert volumes(spec)["istio-config"]["configMap"]["name"] == "extproc-istio-config"
    mount = mounts(extproc)["istio-config"]
    assert "subPath" not in mount
    assert env(extproc)["EXTPROC_CONFIG"] == mount["mountPath"]
    # Envoy's bootstrap is read at start only: a new one gets a new name and rolls the pods.
    envoy_map = volumes(spec)["envoy-config"]["configMap"]["name"]
    assert envoy_map != "extproc-envoy-config"
    assert envoy_map.startswith("extproc-envoy-config-")


# -- 3. The pod, read as data -----------------------------------------------------------------


def test_envoy_listens_where_the_application_resolves_the_seeds_host(
    base: list[dict[str, Any]],
) -> None:
    spec = pod_spec(base)
    bootstrap = yaml.safe_load((BASE / "envoy.yaml").read_text())
    [listener] = bootstrap["static_resources"]["listeners"]
    address = listener["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", 80)
    assert {"ip": "127.0.0.1", "hostnames": ["mydb.com"]} in spec["hostAliases"]
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"]["sysctls"]}
    assert int(sysctls["net.ipv4.ip_unprivileged_port_start"]) <= 80
    # Envoy's admin (it can drain and stop Envoy) is on the pod's loopback only.
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"
    assert f"/127.0.0.1/{admin['port_value']}" in str(container(spec, "envoy")["startupProbe"])


def test_envoy_loads_the_module_the_service_image_installs(base: list[dict[str, Any]]) -> None:
    spec = pod_spec(base)
    install, envoy = container(spec, "install-module"), container(spec, "envoy")
    bootstrap_text = (BASE / "envoy.yaml").read_text()
    assert "name: extproc_module" in bootstrap_text
    assert install["command"][:2] == ["cp", "/usr/local/lib/extproc/libextproc_module.so"]
    target = install["command"][2].rstrip("/")
    assert mounts(install)["module"]["mountPath"] == target
    assert env(envoy)[MODULE_SEARCH_PATH_VAR] == target
    assert mounts(envoy)["module"]["mountPath"] == target
    assert mounts(envoy)["module"]["readOnly"] is True
    # The Dockerfile puts that very file into the service's image.
    assert "/usr/local/lib/extproc/libextproc_module.so" in (ROOT / "Dockerfile").read_text()


def test_the_sidecars_start_in_order_and_share_only_their_socket_volume(
    base: list[dict[str, Any]],
) -> None:
    spec = pod_spec(base)
    names = [c["name"] for c in spec["initContainers"]]
    # The module first (runs to completion), then the brain, then Envoy, then the app.
    assert names == ["install-module", "extproc", "envoy"]
    assert "restartPolicy" not in spec["initContainers"][0]
    assert [c.get("restartPolicy") for c in spec["initContainers"][1:]] == ["Always", "Always"]
    extproc, envoy = container(spec, "extproc"), container(spec, "envoy")
    sockets = env(extproc)["EXTPROC_SOCKET_DIR"]
    assert mounts(extproc)["sockets"]["mountPath"] == sockets == "/run/extproc"
    assert mounts(envoy)["sockets"]["mountPath"] == sockets
    assert "sockets" not in mounts(container(spec, "sleep"))
    assert "/run/extproc/" in (BASE / "envoy.yaml").read_text()


def test_every_container_runs_non_root_read_only_and_limited(base: list[dict[str, Any]]) -> None:
    for objects in (base, kustomize(FLEET)):
        for deployment in [o for o in objects if o["kind"] == "Deployment"]:
            spec = deployment["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["runAsUser"] != 0
            assert spec["automountServiceAccountToken"] is False
            for c in containers(spec):
                where = f"{deployment['metadata']['name']}/{c['name']}"
                security = c["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"]["drop"] == ["ALL"], where
                for bound in ("requests", "limits"):
                    assert set(c["resources"][bound]) == {"cpu", "memory"}, where


def test_the_service_is_probed_on_its_health_and_readiness_endpoints(
    base: list[dict[str, Any]],
) -> None:
    extproc = container(pod_spec(base), "extproc")
    [port] = extproc["ports"]
    assert env(extproc)["EXTPROC_ADMIN"] == f"0.0.0.0:{port['containerPort']}"
    probes = {k: extproc[k]["httpGet"] for k in ("startupProbe", "readinessProbe")}
    assert all(p == {"path": "/readyz", "port": port["name"]} for p in probes.values())
    assert extproc["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    envoy = container(pod_spec(base), "envoy")
    assert "/ready" in str(envoy["readinessProbe"])
    assert "LIVE" in str(envoy["readinessProbe"])


def test_the_service_account_may_only_get_nodes_and_only_the_brain_has_its_token(
    base: list[dict[str, Any]],
) -> None:
    role = one(base, "ClusterRole", "extproc-node-reader")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    binding = one(base, "ClusterRoleBinding", "extproc-node-reader")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    spec = pod_spec(base)
    [subject] = binding["subjects"]
    assert subject["name"] == spec["serviceAccountName"]
    assert one(base, "ServiceAccount", "extproc")["automountServiceAccountToken"] is False
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    holders = [
        c["name"]
        for c in containers(spec)
        if any(m["mountPath"] == token_dir for m in c.get("volumeMounts", []))
    ]
    assert holders == ["extproc"]
    sources = volumes(spec)["kube-api-access"]["projected"]["sources"]
    paths = set()
    for source in sources:
        [(kind, projected)] = source.items()
        items = [projected] if kind == "serviceAccountToken" else projected["items"]
        paths |= {item["path"] for item in items}
    assert paths == {"token", "ca.crt", "namespace"}


def test_the_brain_reads_its_locality_from_its_node_and_labels_from_its_pod(
    base: list[dict[str, Any]],
) -> None:
    spec = pod_spec(base)
    variables = env(container(spec, "extproc"))
    assert variables["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert variables["EXTPROC_LOCALITY_FROM_NODE"] == "$(NODE_NAME)"
    labels_file = Path(variables["EXTPROC_WORKLOAD_LABELS_FILE"])
    mount = mounts(container(spec, "extproc"))["podinfo"]
    assert str(labels_file.parent) == mount["mountPath"]
    [item] = volumes(spec)["podinfo"]["downwardAPI"]["items"]
    assert item == {"path": labels_file.name, "fieldRef": {"fieldPath": "metadata.labels"}}


def test_every_setting_the_pod_gives_the_service_is_one_it_reads(
    base: list[dict[str, Any]],
) -> None:
    given = {
        name for name in env(container(pod_spec(base), "extproc")) if name.startswith("EXTPROC_")
    }
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    help_text = " ".join(result.stdout.split())
    for name in given:
        assert f"${name}" in help_text, f"`extproc serve` reads no {name}"


def test_the_fleet_shares_ejections_only_when_its_secret_names_a_store(
    base: list[dict[str, Any]], fleet: list[dict[str, Any]]
) -> None:
    variables = env(container(pod_spec(base), "extproc"))
    assert variables["EXTPROC_SHARED_STATE"] == {
        "secretKeyRef": {"name": "extproc-shared-state", "key": "url", "optional": True}
    }
    assert variables["EXTPROC_PROXY_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert one(fleet, "Deployment", "sleep")["spec"]["replicas"] == 3
    redis_pod = pod_spec(fleet, "extproc-redis")
    assert env(redis_pod["containers"][0])["REDIS_PASSWORD"]["secretKeyRef"] == {
        "name": "extproc-shared-state",
        "key": "password",
    }
    service = one(fleet, "Service", "extproc-redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    policy = one(fleet, "NetworkPolicy", "extproc-redis")
    [rule] = policy["spec"]["ingress"]
    pod_labels = one(fleet, "Deployment", "sleep")["spec"]["template"]["metadata"]["labels"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()


# -- 4. The Redis component's start script, on a real redis-server ---------------------------


@needs_redis
def test_the_components_redis_lets_its_one_user_reach_the_fleets_keys_only(
    fleet: list[dict[str, Any]],
) -> None:
    [c] = pod_spec(fleet, "extproc-redis")["containers"]
    port = free_port()
    script = c["args"][0].replace("port 6379", f"port {port}\nbind 127.0.0.1")
    process = subprocess.Popen(
        [*c["command"], script],
        env={**os.environ, "REDIS_PASSWORD": "fleet-secret"},
        stdout=subprocess.DEVNULL,
    )
    try:
        fleet_user = redis.Redis.from_url(f"redis://extproc:fleet-secret@127.0.0.1:{port}/0")
        for _ in range(100):
            try:
                fleet_user.ping()
                break
            except redis.ConnectionError:
                subprocess.run(["sleep", "0.05"], check=True)
        # What the brains' link does (extproc/server/fleet_link.py).
        key = "extproc:fleet:sleep:outbound|80||mydb.com|10.0.0.1:80"
        assert fleet_user.set(key, b"x", px=5000)
        assert fleet_user.get(key) == b"x"
        assert list(fleet_user.scan_iter(match="extproc:fleet:sleep:*")) == [key.encode()]
        assert fleet_user.publish("extproc:fleet:sleep", b"x") == 0
        subscriber = fleet_user.pubsub()
        subscriber.subscribe("extproc:fleet:sleep")
        subscriber.close()
        # Nothing else: other keys and channels, admin commands, and no anonymous user.
        for refused in (
            lambda: fleet_user.set("other", b"x"),
            lambda: fleet_user.publish("other", b"x"),
            lambda: fleet_user.flushall(),
            lambda: fleet_user.config_get("*"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(f"redis://extproc:wrong@127.0.0.1:{port}/0").ping()
    finally:
        process.terminate()
        process.wait(timeout=10)
