"""Live reload on real files, sockets and processes: what the watcher sees, a running
service's reload (DNS, EDS, table versions), ``extproc serve`` reloading on SIGHUP, on
a file change and on a ConfigMap-style symlink swap, and refusing bad configs, and a
reload reading only files that have stopped changing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.endpoint.v3 import eds_pb2_grpc

from extproc.core.change import PolicyChange
from extproc.core.policy import Locality, OutlierDetection, Policy, Workload
from extproc.core.table import ServiceTable
from extproc.istio import load_policy, load_policy_text
from extproc.sandbox import DnsResponder
from extproc.server.app import ServiceApp
from extproc.server.metrics import Metrics
from extproc.server.reload import ConfigReloader, fingerprint
from extproc.settings import HostPort, Settings
from extproc.wire import SERVICE_HEADER, SYNC_PATH

from .test_eds import Subscriber, assignments

MYDB = "outbound|80||mydb.com"
OTHER = "outbound|80||other.com"


def entry(
    host: str, endpoints: list[tuple[str, str]], *, resolution: str = "STATIC", name: str = ""
) -> str:
    lines = "".join(f"  - {{address: {a}, locality: {loc}}}\n" for a, loc in endpoints)
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {name or host.split(".")[0]}}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: {resolution}
  endpoints:
{lines}"""


def rule(host: str, interval: str = "1s", base: str = "30s") -> str:
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {host.split(".")[0]}}}
spec:
  host: {host}
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: {interval}, baseEjectionTime: {base}}}
"""


MYDB_YAML = entry("mydb.com", [("127.0.0.11", "us-east1"), ("127.0.0.12", "us-west")])
OTHER_YAML = entry("other.com", [("127.0.0.13", "us-east1")])


# --- what the watcher sees ------------------------------------------------------------------


def configmap(root: Path, version: str, files: dict[str, str]) -> None:
    """Lay out or update a directory as the kubelet's atomic writer does.

    ``..<version>/`` holds the files, ``..data`` points at it, and each file is a symlink
    through ``..data``; an update writes a new version and renames a new ``..data`` link
    over the old one (``kubernetes/kubernetes`` ``pkg/volume/util/atomic_writer.go``).
    """
    (root / f"..{version}").mkdir()
    for name, text in files.items():
        (root / f"..{version}" / name).write_text(text)
    (root / "..data_tmp").symlink_to(f"..{version}")
    (root / "..data_tmp").rename(root / "..data")
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def test_an_unchanged_config_keeps_its_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "mydb.yaml").write_text(MYDB_YAML)
    assert fingerprint(tmp_path) == fingerprint(tmp_path)
    assert fingerprint(tmp_path / "mydb.yaml") == fingerprint(tmp_path / "mydb.yaml")


@pytest.mark.parametrize("watch", ["directory", "file"])
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p.write_text(MYDB_YAML + "#\n"), id="written-in-place"),
        pytest.param(
            lambda p: (
                p.with_suffix(".new").write_text(MYDB_YAML),
                p.with_suffix(".new").rename(p),
            ),
            id="renamed-over",
        ),
    ],
)
def test_a_written_or_renamed_file_changes_the_fingerprint(
    tmp_path: Path, watch: str, change: Callable[[Path], object]
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(MYDB_YAML)
    watched = tmp_path if watch == "directory" else config
    before = fingerprint(watched)
    change(config)
    assert fingerprint(watched) != before


def test_a_new_file_in_the_directory_changes_the_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "mydb.yaml").write_text(MYDB_YAML)
    before = fingerprint(tmp_path)
    (tmp_path / "other.yaml").write_text(OTHER_YAML)
    assert fingerprint(tmp_path) != before


@pytest.mark.parametrize("watch", ["directory", "file"])
def test_a_configmap_symlink_swap_changes_the_fingerprint(tmp_path: Path, watch: str) -> None:
    configmap(tmp_path, "v1", {"mydb.yaml": MYDB_YAML})
    watched = tmp_path if watch == "directory" else tmp_path / "mydb.yaml"
    before = fingerprint(watched)
    configmap(tmp_path, "v2", {"mydb.yaml": MYDB_YAML})  # same text, new files
    assert fingerprint(watched) != before


# --- a running service ----------------------------------------------------------------------


@pytest.fixture
async def dns() -> AsyncIterator[DnsResponder]:
    async with DnsResponder(
        {"east.example": ["127.0.0.11"], "west.example": ["127.0.0.12"]}, ttl_s=1
    ) as responder:
        yield responder


@pytest.fixture
async def app(dns: DnsResponder) -> AsyncIterator[ServiceApp]:
    yaml = (
        entry("mydb.com", [("east.example", "us-east1")], resolution="DNS", name="mydb")
        + "---\n"
        + rule("mydb.com")
    )
    service = ServiceApp(
        load_policy_text(yaml, "mydb.yaml"),
        Settings(
            grpc=HostPort("127.0.0.1", 0),
            admin=HostPort("127.0.0.1", 0),
            sync_port=0,
            shutdown_grace_s=0,
            dns_resolver=dns.address,
            workload=Workload(Locality.parse("us-east1")),
        ),
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def sync(app: ServiceApp, cluster: str = MYDB) -> list[str]:
    """One fast-path sync (in a thread: the service answers on this test's loop)."""
    return await asyncio.to_thread(_sync, app.sync_port, cluster)


def _sync(port: int, cluster: str) -> list[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{SYNC_PATH}",
        data=b"",
        headers={SERVICE_HEADER: cluster},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        lines = str(response.read().decode()).splitlines()
    # The header and the host lines (settings such as ``lb=`` have no space).
    return lines[:1] + [line for line in lines[1:] if " " in line]


async def test_a_reload_resolves_a_new_name_before_the_swap_and_stops_asking_for_a_dropped_one(
    app: ServiceApp, dns: DnsResponder
) -> None:
    text = (
        entry("mydb.com", [("west.example", "us-west")], resolution="DNS", name="mydb")
        + "---\n"
        + rule("mydb.com")
    )

    await app.apply_policy(load_policy_text(text, "mydb.yaml"))
    hosts = [v.address for v in app.table.clusters[MYDB].hosts(app.now())]
    dns.queries.clear()
    await asyncio.sleep(2.5)  # two TTLs: every refresh loop has asked again

    assert hosts == ["127.0.0.12:80"]  # served from the first request after the swap
    asked = {name for name, _ in dns.queries}
    assert asked == {"west.example"}


async def test_table_versions_and_eds_keep_going_after_a_reload(app: ServiceApp) -> None:
    before = int((await sync(app))[0].split()[0])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        subscriber = Subscriber(eds_pb2_grpc.EndpointDiscoveryServiceStub(channel))
        await subscriber.send(MYDB, OTHER)
        first = assignments(await subscriber.next())
        text = (
            entry(
                "mydb.com",
                [("east.example", "us-east1"), ("west.example", "us-west")],
                resolution="DNS",
                name="mydb",
            )
            + "---\n"
            + rule("mydb.com")
            + "---\n"
            + OTHER_YAML
        )

        change = await app.apply_policy(load_policy_text(text, "mydb.yaml"))
        pushed: dict[str, Any] = {}
        while set(pushed) != {MYDB, OTHER}:
            pushed |= assignments(await subscriber.next())
        subscriber.call.cancel()

    after = await sync(app)
    assert change.added == (OTHER,)
    assert change.changed == (MYDB,)
    assert int(after[0].split()[0]) > before
    assert sorted(line.split()[0] for line in after[1:]) == ["127.0.0.11:80"]  # west is P1
    assert [(h[0], h[2]) for h in first[MYDB]] == [(0, "127.0.0.11")]
    assert first[OTHER] == []
    assert [(h[0], h[2]) for h in pushed[MYDB]] == [(0, "127.0.0.11"), (1, "127.0.0.12")]
    assert [h[2] for h in pushed[OTHER]] == ["127.0.0.13"]


# --- ``extproc serve`` ----------------------------------------------------------------------


class Serve:
    """``python -m extproc serve`` on ephemeral ports, its JSON log lines collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.admin = ""

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))
                self._new.set()

    async def wait_for(self, event: str, count: int = 1, timeout_s: float = 15.0) -> dict[str, Any]:
        """The ``count``-th log line with this event."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = [line for line in self.lines if line.get("event") == event]
                if len(found) >= count:
                    return found[count - 1]
                self._new.clear()
                await self._new.wait()

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as response:
            return str(response.read().decode())

    def clusters(self) -> set[str]:
        return {row["cluster_name"] for row in json.loads(self.get("/endpoints"))}


def _socket_dir(tmp_path: Path, index: int) -> Path:
    """A private socket directory per ``serve`` of a test."""
    path = tmp_path / f"sockets-{index}"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    running: list[Serve] = []

    async def start(config: Path, *, watch_s: float = 0.1) -> Serve:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "extproc",
            "serve",
            "--config",
            str(config),
            "--locality",
            "us-east1",
            "--socket-dir",
            str(_socket_dir(tmp_path, len(running))),
            "--admin",
            "127.0.0.1:0",
            "--watch-interval-s",
            str(watch_s),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")},
        )
        server = Serve(proc)
        running.append(server)
        ready = await server.wait_for("service.ready")
        server.admin = ready["admin"]
        return server

    yield start
    for server in running:
        if server.proc.returncode is None:
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.proc.wait(), 15)
        await server._reader


async def test_sighup_reloads_the_config(tmp_path: Path, serve: Callable[..., Any]) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(MYDB_YAML)
    server = await serve(config, watch_s=0)  # no polling: only the signal reloads

    config.write_text(MYDB_YAML + "---\n" + OTHER_YAML)
    server.proc.send_signal(signal.SIGHUP)
    reload = await server.wait_for("config.reload")

    assert reload["reason"] == "signal"
    assert reload["services_added"] == [OTHER]
    assert server.clusters() == {MYDB, OTHER}


async def test_a_changed_file_is_reloaded_without_a_signal(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    (tmp_path / "mydb.yaml").write_text(MYDB_YAML)
    server = await serve(tmp_path)

    (tmp_path / "other.yaml").write_text(OTHER_YAML)
    added = await server.wait_for("config.reload")
    (tmp_path / "other.yaml").unlink()
    removed = await server.wait_for("config.reload", count=2)

    assert added["reason"] == removed["reason"] == "file_change"
    assert added["services_added"] == [OTHER]
    assert removed["services_removed"] == [OTHER]
    assert server.clusters() == {MYDB}


async def test_a_configmap_update_by_symlink_swap_is_reloaded(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    configmap(tmp_path, "v1", {"mydb.yaml": MYDB_YAML})
    server = await serve(tmp_path)

    configmap(tmp_path, "v2", {"mydb.yaml": MYDB_YAML + "---\n" + rule("mydb.com")})
    reload = await server.wait_for("config.reload")

    assert reload["services_changed"] == [MYDB]
    assert 'extproc_config_reloads_total{result="ok"} 1.0' in server.get("/metrics")


async def test_bad_configs_are_rejected_with_their_errors_and_change_nothing(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(MYDB_YAML + "---\n" + rule("mydb.com"))
    server = await serve(config)
    endpoints = server.get("/endpoints")

    config.write_text(MYDB_YAML.replace("hosts: [mydb.com]", "hosts: [mydb.com"))
    syntax = await server.wait_for("config.rejected")
    config.write_text(MYDB_YAML + "---\n" + rule("mydb.com", interval="1x"))
    semantic = await server.wait_for("config.rejected", count=2)

    assert str(config) in syntax["errors"][0]
    assert semantic["errors"] == [
        f'{config}: DestinationRule "mydb" (document 2): '
        'spec.trafficPolicy.outlierDetection.interval: "1x" is not a duration'
    ]
    assert server.events("config.reload") == []
    assert server.get("/endpoints") == endpoints
    assert 'extproc_config_reloads_total{result="rejected"} 2.0' in server.get("/metrics")


# --- reading only what has stopped changing -------------------------------------------------

FULL = MYDB_YAML + "---\n" + rule("mydb.com") + "---\n" + OTHER_YAML


class Recorder:
    """A reloader's ``load`` and ``apply`` that remember what was read and served."""

    def __init__(self) -> None:
        self.loads = 0
        self.applied: list[Policy] = []
        self.changed = asyncio.Event()

    def load(self, path: Path) -> Policy:
        self.loads += 1
        return load_policy(path)

    async def apply(self, policy: Policy) -> PolicyChange:
        self.applied.append(policy)
        self.changed.set()
        return PolicyChange()

    async def next_apply(self, timeout_s: float = 5.0) -> Policy:
        self.changed.clear()
        await asyncio.wait_for(self.changed.wait(), timeout_s)
        return self.applied[-1]


async def write_in_place(path: Path, text: str, pause_s: float) -> None:
    """Truncate, then write ``text`` in two parts, as ``: > f`` then a slow writer would."""
    half = text.index("---\n", text.index("---\n") + 1)  # the first two documents
    with path.open("w") as handle:  # the truncate
        handle.flush()
        await asyncio.sleep(0.05)
        handle.write(text[:half])  # a valid config, but not the one being written
        handle.flush()
        await asyncio.sleep(pause_s)
        handle.write(text[half:])


Shape = list[tuple[str, OutlierDetection | None]]


def shape(policy: Policy) -> Shape:
    """What a config serves, without where it came from."""
    return [(s.cluster_name, s.outlier_detection) for s in policy.services]


def services(text: str) -> Shape:
    return shape(load_policy_text(text, "expected.yaml"))


async def test_a_truncate_then_write_during_a_live_reload_never_swaps_in_the_empty_or_half_state(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(MYDB_YAML)
    versions = [FULL.replace("baseEjectionTime: 30s", f"baseEjectionTime: {n}s") for n in (31, 32)]
    recorder = Recorder()
    reloader = ConfigReloader(config, recorder.load, recorder.apply, poll_s=0.02)
    watching = asyncio.create_task(reloader.run())
    try:
        for text in versions:
            applied = asyncio.create_task(recorder.next_apply())
            await write_in_place(config, text, pause_s=0.12)
            await applied
            await asyncio.sleep(0.4)  # no second, late apply of anything else
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    assert [shape(p) for p in recorder.applied] == [services(t) for t in versions]


async def test_sighup_waits_for_the_config_to_stop_changing(tmp_path: Path) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(MYDB_YAML)
    recorder = Recorder()
    reloader = ConfigReloader(config, recorder.load, recorder.apply, poll_s=0)
    watching = asyncio.create_task(reloader.run())
    try:
        writing = asyncio.create_task(write_in_place(config, FULL, pause_s=0.12))
        await asyncio.sleep(0.01)
        reloader.request()  # the signal lands while the file is empty
        applied = await recorder.next_apply()
        await writing
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    assert shape(applied) == services(FULL)
    assert len(recorder.applied) == 1


async def test_a_write_that_overlaps_the_read_makes_the_reload_read_again(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(MYDB_YAML)
    reads: list[Shape] = []

    def load(path: Path) -> Policy:
        policy = load_policy(path)
        if not reads:
            path.write_text(FULL)  # lands while the first read is under way
        reads.append(shape(policy))
        return policy

    recorder = Recorder()
    reloader = ConfigReloader(config, load, recorder.apply, settle_s=0.01)
    assert await reloader.reload() is True

    assert reads == [services(MYDB_YAML), services(FULL)]
    assert [shape(p) for p in recorder.applied] == [services(FULL)]


async def test_a_config_that_keeps_changing_is_not_read_and_the_next_change_retries(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(MYDB_YAML)
    recorder = Recorder()
    reloader = ConfigReloader(
        config, recorder.load, recorder.apply, settle_s=0.05, settle_timeout_s=0.3
    )

    async def churn() -> None:
        for n in range(20):
            config.write_text(MYDB_YAML + "#" * n + "\n")
            await asyncio.sleep(0.02)

    churning = asyncio.create_task(churn())
    accepted = await reloader.reload()
    await churning

    assert accepted is False
    assert recorder.loads == 0
    assert await reloader.reload() is True  # settled now
    assert [shape(p) for p in recorder.applied] == [services(MYDB_YAML)]


async def test_a_rejected_config_is_reported_once_not_at_every_poll(tmp_path: Path) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(MYDB_YAML)
    table = ServiceTable(
        load_policy(config), Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    metrics = Metrics(lambda: table, lambda: 0.0)
    recorder = Recorder()
    reloader = ConfigReloader(
        config, recorder.load, recorder.apply, metrics=metrics, poll_s=0.02, settle_s=0.01
    )
    watching = asyncio.create_task(reloader.run())
    try:
        config.write_text("apiVersion: networking.istio.io/v1\nkind: ServiceEnrty\n")
        for _ in range(100):
            if recorder.loads:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # some 25 polls of the same, rejected file
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    assert recorder.loads == 1
    assert recorder.applied == []
    assert 'extproc_config_reloads_total{result="rejected"} 1.0' in metrics.exposition().decode()


async def test_a_cluster_removed_then_added_again_is_published_again(app: ServiceApp) -> None:
    both = load_policy_text(MYDB_YAML + "---\n" + OTHER_YAML, "both.yaml")
    mydb_only = load_policy_text(MYDB_YAML, "mydb.yaml")
    other = "outbound|80||other.com"
    await app.apply_policy(both)
    assert app.eds._hosts[other]
    await app.apply_policy(mydb_only)  # other.com removed: Envoy gets it empty
    assert other not in app.eds._hosts
    await app.apply_policy(both)  # back: its hosts are pushed again
    assert [h.ip for h in app.eds._hosts[other]] == ["127.0.0.13"]
