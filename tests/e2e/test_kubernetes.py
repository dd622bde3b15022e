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
5. The pod's containers run as local processes from their own commands and env, mapped to
   loopback (section 5 says how), and play the seed's story: the locality from the Node
   through a stand-in of the API server, then the seed's failure as a ConfigMap edit.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from extproc.demo import free_port
from extproc.istio import load_policy
from extproc.render.bootstrap import render_bootstrap
from extproc.sandbox import DnsResponder
from extproc.sandbox.client import get
from extproc.server.envoy_process import find_envoy_binary, validate_config
from extproc.server.stack import envoy_environment
from extproc.settings import HostPort, Settings
from extproc.wire import MODULE_SEARCH_PATH_VAR, DataPath
from tests.kube_api_server import NodeApi, node_api
from tests.redis_server import needs_redis

from .conftest import EAST, EXTPROC, WEST, Region
from .test_compose import relocate_sockets, render_command, socket_addresses

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
    assert HEADER + render_command(RENDER_ARGS) == (BASE / "envoy.yaml").read_text()


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
    # The ACL names the fleet the brains are in.
    fleet_name = env(container(pod_spec(fleet), "extproc"))["EXTPROC_FLEET"]
    assert (
        f"~extproc:fleet:{fleet_name}:* resetchannels &extproc:fleet:{fleet_name} " in c["args"][0]
    )
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
            lambda: fleet_user.set("extproc:fleet:shop:x", b"x"),  # another fleet's
            lambda: fleet_user.publish("extproc:fleet:shop", b"x"),
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


# -- 5. The pod's containers as local processes, and the seed's story ----------------------
#
# The mapping from the pod to loopback, and nothing else (as test_compose.py's LocalCompose):
# - the API server becomes the loopback stand-in of its Node endpoint (tests/kube_api_server.py),
#   with the Node the pod runs on in us-east1; the service account's directory a temp one;
# - the cluster's DNS becomes a DnsResponder resolving the seed's names to the stand-ins;
# - each mounted ConfigMap becomes a directory in the kubelet's layout (a timestamped
#   directory, the ``..data`` link to it, and a link per key), updated as the kubelet updates
#   it; the downward API's labels file a file of the same format; every emptyDir a temp dir;
# - ports: Envoy's 127.0.0.1:80 and admin, and the service's 0.0.0.0:9090, become free
#   loopback ports; the stand-ins' port 80 in the Istio YAML becomes each stand-in's port.


class ConfigMapVolume:
    """A ConfigMap mounted as a directory, as the kubelet lays it out and swaps it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.version = 0
        directory.mkdir()

    def project(self, data: dict[str, str]) -> None:
        self.version += 1
        payload = self.directory / f"..2026_12_02_00_00_0{self.version}.{self.version:09d}"
        payload.mkdir()
        for key, text in data.items():
            (payload / key).write_text(text)
        staged = self.directory / "..data_tmp"
        staged.symlink_to(payload.name)
        staged.rename(self.directory / "..data")  # one atomic step, as the kubelet does
        for key in data:
            link = self.directory / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")


def seed_with_ports(text: str, east_port: int, west_port: int) -> str:
    """The ConfigMap's Istio YAML with the endpoints' port 80 mapped to the stand-ins'."""
    docs = list(yaml.safe_load_all(text))
    [entry] = [d for d in docs if d["kind"] == "ServiceEntry"]
    east, west = entry["spec"]["endpoints"]
    assert east["ports"] == west["ports"] == {"http": 80}
    east["ports"]["http"], west["ports"]["http"] = east_port, west_port
    return yaml.safe_dump_all(docs, sort_keys=False)


@dataclass
class LocalPod:
    tmp: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
        with (self.tmp / f"{name}.log").open("wb") as log:
            self.procs[name] = await asyncio.create_subprocess_exec(
                *argv,
                env=base | {"PYTHONUNBUFFERED": "1"} | env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    async def probe(self, name: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Run a container's startup probe until it passes (periodSeconds 1 in the pod)."""
        deadline = time.monotonic() + 30
        while not await check():
            assert self.procs[name].returncode is None, f"{name} exited:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{name} never started:\n{self.log(name)}"
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def brain_env(
    extproc: dict[str, Any], paths: dict[str, str], fields: dict[str, str], admin: str
) -> dict[str, str]:
    """The extproc container's env, mapped: every variable is either mapped or refused."""
    out: dict[str, str] = {}
    for entry in extproc["env"]:
        name = entry["name"]
        if "value" in entry:
            value = str(entry["value"])
            for var, given in out.items():  # Kubernetes' $(VAR) from earlier variables
                value = value.replace(f"$({var})", given)
            out[name] = admin if name == "EXTPROC_ADMIN" else paths.get(value, value)
        elif "fieldRef" in entry["valueFrom"]:
            out[name] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:  # an optional Secret that does not exist: the variable is not set
            assert entry["valueFrom"]["secretKeyRef"]["optional"] is True, name
    return out


async def endpoints(admin: tuple[str, int]) -> list[dict[str, Any]]:
    reply = await get(admin, "extproc", "/endpoints")
    rows: list[dict[str, Any]] = json.loads(reply.body)
    return rows


async def test_the_pods_containers_as_local_processes_fail_over_like_the_seed(
    tmp_path: Path, dns: DnsResponder, regions: dict[str, Region]
) -> None:
    objects = kustomize(BASE)
    spec = pod_spec(objects)
    east_port, west_port = regions["east"].port, regions["west"].port
    istio_data = one(objects, "ConfigMap", "extproc-istio-config")["data"]
    [(istio_key, istio_text)] = istio_data.items()
    config_volume = ConfigMapVolume(tmp_path / "istio-config")
    config_volume.project({istio_key: seed_with_ports(istio_text, east_port, west_port)})
    pod_dir = tmp_path / "podinfo"
    pod_dir.mkdir()
    # The downward API's labels file: the pod template's labels, one `key="value"` a line.
    template = one(objects, "Deployment", "sleep")["spec"]["template"]
    labels_text = "".join(f'{k}="{v}"\n' for k, v in template["metadata"]["labels"].items())
    sockets, module_dir = tmp_path / "sockets", tmp_path / "module"
    sockets.mkdir(mode=0o700)
    module_dir.mkdir()

    pod = LocalPod(tmp_path)
    api = NodeApi(nodes={"node-a": {"topology.kubernetes.io/region": "us-east1"}})
    with node_api(tmp_path, api) as cluster:
        try:
            # install-module: its cp, from where the image has the build to the volume.
            install = container(spec, "install-module")
            built = envoy_environment(POD_SETTINGS)[MODULE_SEARCH_PATH_VAR]
            source = Path(built) / Path(install["command"][1]).name
            shutil.copy(source, module_dir)

            extproc = container(spec, "extproc")
            labels_file = Path(env(extproc)["EXTPROC_WORKLOAD_LABELS_FILE"])
            (pod_dir / labels_file.name).write_text(labels_text)
            admin = ("127.0.0.1", free_port())
            variables = brain_env(
                extproc,
                paths={
                    mounts(extproc)["istio-config"]["mountPath"]: str(config_volume.directory),
                    str(labels_file): str(pod_dir / labels_file.name),
                    mounts(extproc)["sockets"]["mountPath"]: str(sockets),
                },
                fields={"spec.nodeName": "node-a", "metadata.name": "sleep-5d8f9-abcde"},
                admin="{}:{}".format(*admin),
            )
            variables |= cluster.env | {"EXTPROC_DNS_RESOLVER": "{}:{}".format(*dns.address)}
            # The image's ENTRYPOINT ["extproc"] with the container's args.
            await pod.spawn("extproc", [*EXTPROC, *extproc["args"]], variables)

            async def brain_ready() -> bool:
                try:
                    return (await get(admin, "extproc", "/readyz", timeout_s=1)).status == 200
                except OSError:
                    return False

            await pod.probe("extproc", brain_ready)

            envoy = container(spec, "envoy")
            config = yaml.safe_load(
                one(objects, "ConfigMap", "extproc-envoy-config")["data"]["envoy.yaml"]
            )
            relocate_sockets(config, sockets)
            ports: dict[int, int] = {}
            for address in socket_addresses(config):
                assert address["address"] == "127.0.0.1"
                ports[address["port_value"]] = ports.get(address["port_value"]) or free_port()
                address["port_value"] = ports[address["port_value"]]
            (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            argv = list(envoy["command"])
            assert argv[0] == "envoy"
            argv[0] = str(find_envoy_binary())
            argv[argv.index("--config-path") + 1] = str(tmp_path / "envoy.yaml")
            # The pod's ENVOY_DYNAMIC_MODULES_SEARCH_PATH: the module volume.
            assert env(envoy)[MODULE_SEARCH_PATH_VAR] == mounts(envoy)["module"]["mountPath"]
            search_path = {MODULE_SEARCH_PATH_VAR: str(module_dir)}
            await pod.spawn("envoy", [*argv, "--concurrency", "2"], search_path)
            probe = envoy["startupProbe"]["exec"]["command"]
            probe = [arg.replace("/127.0.0.1/9901", f"/127.0.0.1/{ports[9901]}") for arg in probe]

            async def envoy_live() -> bool:
                check = await asyncio.create_subprocess_exec(
                    *probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                return await check.wait() == 0

            await pod.probe("envoy", envoy_live)
            listener = ("127.0.0.1", ports[80])  # where hostAliases sends mydb.com

            # The seed's loop, `curl -sS http://mydb.com`: every answer from us-east1, the
            # node's region, read through the API with the pod's token.
            answers = [(await get(listener, "mydb.com")).body.strip() for _ in range(5)]
            assert answers == [f"healthy: {EAST}"] * 5
            assert api.requests == [("/api/v1/nodes/node-a", "Bearer token-1")]
            rows = {r["endpoint_address"]: r for r in await endpoints(admin)}
            assert (rows[EAST]["locality"], rows[EAST]["priority"]) == ("us-east1", 0)

            # The seed's failure: its ServiceEntry with us-east1 on port 81, applied to the
            # ConfigMap; the kubelet swaps ..data and the service reloads it.
            failing = seed_with_ports(istio_text, 81, west_port)
            config_volume.project({istio_key: failing})
            deadline = time.monotonic() + 15
            while ":81" not in str(await endpoints(admin)):
                assert time.monotonic() < deadline, pod.log("extproc")
                await asyncio.sleep(0.2)
            replies = [await get(listener, "mydb.com") for _ in range(6)]
            failed = [r for r in replies if r.status != 200]
            # At most the seed's one failed request, then us-west only.
            assert len(failed) <= 1
            assert failed == replies[: len(failed)]
            assert {r.body.strip() for r in replies[len(failed) :]} == {f"healthy: {WEST}"}
            rows = {r["endpoint_address"]: r for r in await endpoints(admin)}
            assert rows[EAST]["ejected"] is True
        finally:
            await pod.stop()
            for name in pod.procs:
                print(f"--- {name} ---\n{pod.log(name)}")
