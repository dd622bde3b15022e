"""The workload's locality and labels from Kubernetes, by Istio's rules: the Node's topology
labels, the pod's labels from a downward API file, their ``istio-locality`` override, and how
they combine with ``--locality`` and ``--workload-labels``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from extproc.cli.flags import build_parser, workload_from_args, workload_given
from extproc.cli.kube_workload import (
    PodLabels,
    go_unquote,
    kubernetes_workload,
    node_locality,
    node_name,
    parse_downward_api,
    pod_labels,
)
from extproc.core.policy import Locality, Workload
from extproc.errors import ExtprocError

GA_REGION = "topology.kubernetes.io/region"
GA_ZONE = "topology.kubernetes.io/zone"
SUBZONE = "topology.istio.io/subzone"
BETA_REGION = "failure-domain.beta.kubernetes.io/region"
BETA_ZONE = "failure-domain.beta.kubernetes.io/zone"


@pytest.fixture(autouse=True)
def _no_extproc_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("EXTPROC_")]:
        monkeypatch.delenv(name)


# --- the Node's labels -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param(
            {GA_REGION: "us-east1", GA_ZONE: "us-east1-b", SUBZONE: "rack7"},
            Locality("us-east1", "us-east1-b", "rack7"),
            id="ga-and-subzone",
        ),
        pytest.param({GA_REGION: "us-east1"}, Locality("us-east1"), id="region-only"),
        pytest.param(
            {BETA_REGION: "eu-west1", BETA_ZONE: "eu-west1-a"},
            Locality("eu-west1", "eu-west1-a"),
            id="beta-labels",
        ),
        pytest.param(
            {GA_REGION: "ga", BETA_REGION: "beta", GA_ZONE: "ga-z", BETA_ZONE: "beta-z"},
            Locality("ga", "ga-z"),
            id="ga-wins-over-beta",
        ),
        pytest.param(
            {GA_REGION: "", BETA_REGION: "beta", GA_ZONE: "", BETA_ZONE: "beta-z"},
            Locality("beta", "beta-z"),
            id="empty-ga-falls-back-to-beta",
        ),
        pytest.param(
            {GA_REGION: "r", "kubernetes.io/hostname": "n1", "topology.istio.io/network": "x"},
            Locality("r"),
            id="other-labels-ignored",
        ),
    ],
)
def test_node_locality_follows_istio_get_pod_locality(
    labels: dict[str, str], expected: Locality
) -> None:
    assert node_locality("node-a", labels) == expected


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param({}, id="no-labels"),
        pytest.param({GA_ZONE: "us-east1-b", SUBZONE: "rack7"}, id="zone-without-region"),
        pytest.param({GA_REGION: ""}, id="empty-region"),
    ],
)
def test_a_node_without_a_region_label_is_an_error_naming_node_and_label(
    labels: dict[str, str],
) -> None:
    with pytest.raises(
        ExtprocError, match=r"--locality-from-node node-a: .*no topology.kubernetes"
    ):
        node_locality("node-a", labels)


def test_the_missing_region_error_lists_the_topology_labels_the_node_has() -> None:
    with pytest.raises(ExtprocError, match=r"it has topology\.kubernetes\.io/zone=z1"):
        node_locality("node-a", {GA_ZONE: "z1", "app": "x"})


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("Node-A", id="upper-case"),
        pytest.param("node_a", id="underscore"),
        pytest.param("../secrets", id="path"),
        pytest.param("a" * 254, id="too-long"),
    ],
)
def test_a_node_name_must_be_a_dns_subdomain(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"spec\.nodeName"):
        node_name(text)


def test_a_real_node_name_is_accepted() -> None:
    name = "gke-prod-pool-1-3f2a9c1e-x7kq.us-east1-b.c.project.internal"
    assert node_name(name) == name


# --- Go-quoted values and the downward API file --------------------------------------------------


@pytest.mark.parametrize(
    ("quoted", "expected"),
    [
        pytest.param('""', "", id="empty"),
        pytest.param('"db"', "db", id="plain"),
        pytest.param(r'"say \"hi\""', 'say "hi"', id="escaped-quotes"),
        pytest.param(r'"a\\b"', "a\\b", id="escaped-backslash"),
        pytest.param(r'"tab\there\nline"', "tab\there\nline", id="control-escapes"),
        pytest.param(r'"\a\b\f\r\v"', "\a\b\f\r\v", id="all-letter-escapes"),
        pytest.param(r'"\x41\101"', "AA", id="hex-and-octal-bytes"),
        pytest.param(r'"\xc3\xa9"', "é", id="utf8-bytes"),
        pytest.param(r'"\u00e9\U0001F600"', "é\U0001f600", id="code-points"),
        pytest.param('"é"', "é", id="raw-utf8"),
    ],
)
def test_go_quoted_strings_unquote_as_strconv_does(quoted: str, expected: str) -> None:
    assert go_unquote(quoted) == expected


@pytest.mark.parametrize(
    "quoted",
    [
        pytest.param("db", id="unquoted"),
        pytest.param('"db', id="unterminated"),
        pytest.param("'db'", id="single-quotes"),
        pytest.param("`db`", id="backquotes"),
        pytest.param('"a"b"', id="inner-quote"),
        pytest.param(r'"\q"', id="unknown-escape"),
        pytest.param(r'"\'"', id="single-quote-escape"),
        pytest.param(r'"\400"', id="octal-above-255"),
        pytest.param(r'"\xff"', id="not-utf8"),
        pytest.param(r'"\ud800"', id="surrogate"),
        pytest.param(r'"\x4"', id="short-hex"),
        pytest.param('"trailing\\"', id="trailing-backslash"),
    ],
)
def test_what_go_would_not_unquote_is_rejected(quoted: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case its own reason)
        go_unquote(quoted)


def test_a_downward_api_file_parses_as_kubernetes_writes_it() -> None:
    text = (
        'app="mydb-client"\n'
        'pod-template-hash="7d9f8b6c4d"\n'
        'team="say \\"hi\\""\n'
        'topology.istio.io/subzone="rack7"'
    )
    assert parse_downward_api(text, "labels") == {
        "app": "mydb-client",
        "pod-template-hash": "7d9f8b6c4d",
        "team": 'say "hi"',
        "topology.istio.io/subzone": "rack7",
    }


@pytest.mark.parametrize(
    "text",
    [pytest.param("", id="empty"), pytest.param("\n\n", id="blank-lines")],
)
def test_an_empty_labels_file_is_a_pod_without_labels(text: str) -> None:
    assert parse_downward_api(text, "labels") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('app="a"\nversion', r"f:2: 'version' is not key=\"value\"", id="no-equals"),
        pytest.param('="a"', r"f:1: '=\"a\"' is not key", id="no-key"),
        pytest.param('a b="x"', r"f:1: 'a b=\"x\"' is not key", id="space-in-key"),
        pytest.param(
            'app="a"\n\nversion=v1', r"f:3: the value of 'version' is not a Go-quoted", id="bare"
        ),
        pytest.param(
            'app="a\\q"',
            r"f:1: the value of 'app' is not a Go-quoted string: a bad escape",
            id="esc",
        ),
        pytest.param('app="a"\napp="b"', r"f:2: label 'app' is given twice", id="twice"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ExtprocError, match=message):
        parse_downward_api(text, "f")


# --- the pod's labels: Istio's locality override --------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"app": "a", "pod-template-hash": "h"},
            PodLabels((("app", "a"),), None),
            id="template-hash-dropped-no-locality",
        ),
        pytest.param(
            {"app": "a", "istio-locality": "us-east1.us-east1-b"},
            PodLabels(
                (("app", "a"), ("istio-locality", "us-east1/us-east1-b")),
                Locality("us-east1", "us-east1-b"),
                "istio-locality",
            ),
            id="dots-become-slashes",
        ),
        pytest.param(
            {"istio-locality": "r/z.1/s"},
            PodLabels(
                (("istio-locality", "r/z.1/s"),), Locality("r", "z.1", "s"), "istio-locality"
            ),
            id="slashes-kept-as-they-are",
        ),
        pytest.param(
            {"topology.istio.io/locality": "r1.z1", "istio-locality": "r2.z2"},
            PodLabels(
                (("topology.istio.io/locality", "r1.z1"), ("istio-locality", "r1/z1")),
                Locality("r1", "z1"),
                "topology.istio.io/locality",
            ),
            id="topology-label-wins-over-legacy",
        ),
        pytest.param(
            {"topology.istio.io/locality": "", "istio-locality": "r2"},
            PodLabels((("topology.istio.io/locality", ""), ("istio-locality", "r2")), None),
            id="present-but-empty-hides-legacy-as-in-istio",
        ),
    ],
)
def test_pod_labels_follow_pilot_agent(raw: dict[str, str], expected: PodLabels) -> None:
    assert pod_labels(raw) == expected


# --- how the sources combine -------------------------------------------------------------------


class NodeAPI:
    """Stands in for ``kube_api.read_node_labels``: the labels of each node, and who asked."""

    def __init__(self, nodes: Mapping[str, Mapping[str, str]]) -> None:
        self.nodes = nodes
        self.asked: list[str] = []

    def __call__(self, node: str) -> Mapping[str, str]:
        self.asked.append(node)
        return self.nodes[node]


NODES = NodeAPI({"node-a": {GA_REGION: "us-east1", GA_ZONE: "us-east1-b"}})


def _labels_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels"
    path.write_text(text)
    return path


def test_the_node_gives_the_locality_and_the_file_the_labels(tmp_path: Path) -> None:
    api = NodeAPI(NODES.nodes)
    locality, labels = kubernetes_workload(
        locality=None,
        labels=(),
        labels_file=_labels_file(tmp_path, 'app="client"\npod-template-hash="x"'),
        node="node-a",
        node_labels=api,
    )
    assert (locality, labels) == (Locality("us-east1", "us-east1-b"), (("app", "client"),))
    assert api.asked == ["node-a"]


def test_the_pods_locality_label_wins_and_the_node_is_not_read(tmp_path: Path) -> None:
    api = NodeAPI(NODES.nodes)
    locality, _ = kubernetes_workload(
        locality=None,
        labels=(),
        labels_file=_labels_file(tmp_path, 'istio-locality="us-west.us-west-a"'),
        node="node-a",
        node_labels=api,
    )
    assert locality == Locality("us-west", "us-west-a")
    assert api.asked == []


def test_typed_labels_with_the_node_keep_the_typed_labels() -> None:
    locality, labels = kubernetes_workload(
        locality=None,
        labels=(("tier", "gold"),),
        labels_file=None,
        node="node-a",
        node_labels=NODES,
    )
    assert (locality, labels) == (Locality("us-east1", "us-east1-b"), (("tier", "gold"),))


def test_the_file_with_typed_locality_sets_only_the_labels(tmp_path: Path) -> None:
    locality, labels = kubernetes_workload(
        locality="r/z", labels=(), labels_file=_labels_file(tmp_path, 'app="a"'), node=None
    )
    assert (locality, labels) == (Locality("r", "z"), (("app", "a"),))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(
            {"locality": "r1", "node": "node-a"},
            r"--locality \(\$EXTPROC_LOCALITY\) and --locality-from-node .* both set",
            id="locality-and-node",
        ),
        pytest.param(
            {"labels": (("a", "b"),), "labels_file": "FILE"},
            r"--workload-labels \(\$EXTPROC_WORKLOAD_LABELS\) and --workload-labels-file",
            id="labels-and-file",
        ),
        pytest.param(
            {"locality": "r1", "labels_file": "LOCALITY_FILE"},
            "--locality r1 and the pod's istio-locality label .* both give the locality",
            id="locality-and-pod-locality-label",
        ),
    ],
)
def test_two_sources_for_one_thing_are_an_error(
    tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    files = {
        "FILE": _labels_file(tmp_path, 'app="a"'),
        "LOCALITY_FILE": _labels_file(tmp_path, 'istio-locality="r2"'),
    }
    kwargs: dict[str, object] = {"locality": None, "labels": (), "labels_file": None, "node": None}
    kwargs.update(flags)
    if isinstance(kwargs["labels_file"], str):
        kwargs["labels_file"] = files[kwargs["labels_file"]]
    api = NodeAPI(NODES.nodes)
    with pytest.raises(ExtprocError, match=message):
        kubernetes_workload(node_labels=api, **kwargs)  # type: ignore[arg-type]
    assert api.asked == []


def test_a_missing_labels_file_says_how_to_mount_one(tmp_path: Path) -> None:
    with pytest.raises(ExtprocError, match=r"labels-file .*nope: cannot read: .*downwardAPI"):
        kubernetes_workload(locality=None, labels=(), labels_file=tmp_path / "nope", node=None)


# --- the flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["up", "serve", "check"])
def test_the_kubernetes_flags_exist_where_locality_does(command: str, tmp_path: Path) -> None:
    labels = _labels_file(tmp_path, 'app="client"\ntopology.istio.io/cluster="c2"')
    args = build_parser().parse_args(
        [command, "--config", "x.yaml", "--workload-labels-file", str(labels), "--locality", "r1"]
    )
    assert workload_given(args)
    assert workload_from_args(args) == Workload(
        Locality("r1"), (("app", "client"), ("topology.istio.io/cluster", "c2")), "c2"
    )


def test_the_kubernetes_flags_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    labels = _labels_file(tmp_path, 'istio-locality="r9.z9"')
    monkeypatch.setenv("EXTPROC_LOCALITY_FROM_NODE", "node-a")
    monkeypatch.setenv("EXTPROC_WORKLOAD_LABELS_FILE", str(labels))
    args = build_parser().parse_args(["serve", "--config", "x.yaml"])
    assert (args.locality_from_node, args.workload_labels_file) == ("node-a", labels)
    # The pod's label gives the locality: the node is not read (no API here).
    assert workload_from_args(args).locality == Locality("r9", "z9")


def test_a_bad_node_name_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXTPROC_LOCALITY_FROM_NODE", "Node_A")
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["check", "x.yaml"])
    assert exit_info.value.code == 2
    assert "$EXTPROC_LOCALITY_FROM_NODE" in capsys.readouterr().err


def test_without_the_kubernetes_flags_the_workload_is_as_before() -> None:
    args = build_parser().parse_args(["check", "x.yaml"])
    assert not workload_given(args)
    assert workload_from_args(args) == Workload()
