"""The workload's labels from ``--workload-labels`` / ``EXTPROC_WORKLOAD_LABELS``."""

from __future__ import annotations

import argparse

import pytest

from extproc.cli.flags import build_parser, workload_from_args
from extproc.cli.values import parse_labels
from extproc.core.policy import Locality, Workload


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", (), id="empty"),
        pytest.param("app=db", (("app", "db"),), id="one"),
        pytest.param(" a=1 , b=2 ,", (("a", "1"), ("b", "2")), id="spaces-and-trailing-comma"),
        pytest.param("a=", (("a", ""),), id="empty-value"),
        pytest.param("a=b=c", (("a", "b=c"),), id="value-with-equals"),
    ],
)
def test_labels_parse_as_key_value_pairs_in_order(
    text: str, expected: tuple[tuple[str, str], ...]
) -> None:
    assert parse_labels(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("app", id="no-equals"),
        pytest.param("=db", id="no-key"),
        pytest.param("a=1,a=2", id="repeated-key"),
    ],
)
def test_malformed_labels_are_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_labels(text)


@pytest.mark.parametrize("command", ["up", "serve"])
def test_workload_comes_from_locality_and_labels(command: str) -> None:
    args = build_parser().parse_args(
        [command, "--config", "x.yaml", "--locality", "r1/z1", "--workload-labels", "tier=gold"]
    )
    assert workload_from_args(args) == Workload(Locality("r1", "z1"), (("tier", "gold"),))


def test_workload_labels_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTPROC_WORKLOAD_LABELS", "tier=gold,topology.istio.io/cluster=c2")
    args = build_parser().parse_args(["serve", "--config", "x.yaml"])
    workload = workload_from_args(args)
    assert workload.labels == (("tier", "gold"), ("topology.istio.io/cluster", "c2"))
    assert workload.cluster_id == "c2"
