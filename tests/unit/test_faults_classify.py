"""The fault suite's judgement (``bench/faults.py``): which host the policy allowed to serve a
request, from the status views around it, and the figures of a case."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from extproc.demo import seed_yaml
from extproc.errors import ConfigError
from extproc.istio import load_policy_text
from extproc.sandbox import Mode


def _load_faults() -> ModuleType:
    # bench/ is a directory of scripts, not a package: load the script by its path.
    path = Path(__file__).resolve().parents[2] / "bench" / "faults.py"
    spec = importlib.util.spec_from_file_location("bench_faults", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


faults = _load_faults()
HostState, View, Request, Fault = faults.HostState, faults.View, faults.Request, faults.Fault

EAST = "127.0.0.41:8000"
WEST = "127.0.0.42:8000"
MOVED = "127.0.0.43:8000"
GRACE = 0.3
LAG = 0.15


def view(t: float, *, east_ejected: bool = False, east: str = EAST) -> object:
    """The seed's view for a workload in us-east1: us-east1 at P0, us-west at P1."""
    return View(t, (HostState(east, 0, east_ejected), HostState(WEST, 1, False)))


def served(by: str, sent: float, done: float | None = None) -> object:
    return Request(sent, sent + 0.01 if done is None else done, 200, by, True)


@pytest.mark.parametrize(
    ("hosts", "loaded"),
    [
        pytest.param([(0, False), (1, False)], {0}, id="p0-healthy-takes-everything"),
        pytest.param([(0, True), (1, False)], {1}, id="p0-ejected-fails-over"),
        pytest.param([(0, False), (0, True), (1, False)], {0, 1}, id="half-of-p0-spills-30"),
        pytest.param([(0, False), (0, False), (0, True), (1, False)], {0, 1}, id="93-7"),
        pytest.param([(0, False), (0, False), (0, False), (0, True)], {0}, id="one-priority"),
        pytest.param([(0, True), (1, True)], set(), id="all-ejected-no-panic"),
        pytest.param([(0, True), (1, False), (2, False)], {1}, id="p1-takes-all-not-p2"),
    ],
)
def test_loaded_priorities_follow_envoys_priority_load(
    hosts: list[tuple[int, bool]], loaded: set[int]
) -> None:
    states = [HostState(f"127.0.0.{i}:80", p, ejected) for i, (p, ejected) in enumerate(hosts)]
    assert faults.loaded_priorities(states) == loaded


@pytest.mark.parametrize(
    ("views", "request_", "fault", "wrong"),
    [
        pytest.param([view(0.0)], served(EAST, 1.0), None, False, id="east-while-healthy"),
        pytest.param([view(0.0)], served(WEST, 1.0), None, True, id="west-while-east-healthy"),
        pytest.param(
            [view(0.0), view(0.5, east_ejected=True)],
            served(WEST, 1.0),
            None,
            False,
            id="west-while-east-ejected",
        ),
        pytest.param(
            [view(0.0)],
            served(WEST, 1.0),
            Fault(EAST, 0.9, 1.5),
            False,
            id="west-by-retry-while-east-refuses",
        ),
        pytest.param(
            [view(0.0)],
            served(WEST, 1.0),
            Fault(EAST, 2.0, 3.0),
            True,
            id="west-when-east-failed-only-later",
        ),
        pytest.param(
            [view(0.0), view(0.5, east_ejected=True)],
            served(EAST, 1.0),
            None,
            True,
            id="east-while-ejected",
        ),
        pytest.param(
            [view(0.0), view(0.9, east_ejected=True)],
            served(EAST, 1.0),
            None,
            False,
            id="east-just-after-its-ejection",
        ),
        pytest.param(
            [view(0.0, east_ejected=True), view(0.9)],
            served(WEST, 1.0),
            None,
            False,
            id="west-just-after-east-came-back",
        ),
        pytest.param(
            [view(0.0, east_ejected=True), view(0.5)],
            served(WEST, 1.0),
            None,
            True,
            id="west-well-after-east-came-back",
        ),
        pytest.param(
            [view(0.0), view(0.5, east=MOVED)],
            served(EAST, 1.0),
            None,
            True,
            id="old-address-after-the-name-moved",
        ),
        pytest.param(
            [view(0.0), view(0.5, east=MOVED)],
            served(MOVED, 1.0),
            None,
            False,
            id="new-address-after-the-name-moved",
        ),
        pytest.param(
            [view(0.0), view(1.1, east=MOVED)],
            served(MOVED, 1.0),
            None,
            False,
            id="new-address-a-poll-before-the-view-shows-it",
        ),
        pytest.param(
            [view(0.0), view(1.5, east=MOVED)],
            served(MOVED, 1.0),
            None,
            True,
            id="new-address-long-before-the-view-shows-it",
        ),
        pytest.param(
            [view(0.0), view(1.5, east_ejected=True)],
            served(EAST, 1.0, done=2.0),
            None,
            False,
            id="a-long-request-judged-by-every-view-it-spans",
        ),
        pytest.param(
            [view(0.0)],
            served("unknown:somebody", 1.0),
            None,
            True,
            id="a-stand-in-the-view-does-not-know",
        ),
        pytest.param(
            [view(0.0)], Request(1.0, 1.1, 503, "", True), None, False, id="no-stand-in-answered"
        ),
        pytest.param([], served(WEST, 1.0), None, False, id="no-view-nothing-known"),
    ],
)
def test_misrouted_means_a_host_no_view_around_the_request_allowed(
    views: list[object], request_: object, fault: object, wrong: bool
) -> None:
    found = faults.misrouted(request_, views, [fault] if fault else [], GRACE, LAG)
    assert found is wrong


def test_views_in_effect_start_with_the_last_one_read_before_the_request() -> None:
    views = [view(t) for t in (0.0, 1.0, 2.0, 3.0)]

    found = faults.views_in_effect(views, 1.5, 2.5)

    assert [v.t for v in found] == [1.0, 2.0]


def test_faults_are_the_spans_a_stand_in_was_not_healthy() -> None:
    changes = [
        (1.0, EAST, Mode.REFUSE),
        (1.3, EAST, Mode.HEALTHY),
        (1.6, EAST, Mode.REFUSE),
        (2.0, WEST, Mode.HANG),
        (2.5, WEST, Mode.RESET),
        (3.0, WEST, Mode.HEALTHY),
    ]

    found = faults.faults_from_modes(changes, end=9.0)

    assert sorted(found, key=lambda f: f.start) == [
        Fault(EAST, 1.0, 1.3),
        Fault(EAST, 1.6, 9.0),
        Fault(WEST, 2.0, 3.0),
    ]


def test_the_longest_gap_is_between_two_successes_and_ignores_failures() -> None:
    requests = [
        served(EAST, 0.0, done=0.1),
        Request(0.2, 0.3, 0, "", False, "refused"),
        served(EAST, 0.9, done=1.6),
        Request(1.0, 3.0, 0, "", False, "timeout"),
        served(WEST, 1.7, done=1.8),
    ]

    start, length = faults.longest_gap(requests, end=1.9)

    assert (start, length) == (pytest.approx(0.1), pytest.approx(1.5))


def test_a_loop_that_ends_failing_has_its_gap_run_to_the_end() -> None:
    requests = [served(EAST, 0.0, done=0.1), Request(0.2, 0.3, 503, "", True, "HTTP 503")]

    assert faults.longest_gap(requests, end=5.0) == (pytest.approx(0.1), pytest.approx(4.9))
    assert faults.longest_gap(requests[1:], end=5.0) is None


def test_a_truncated_answer_is_a_failure_though_its_status_is_200() -> None:
    truncated = Request(0.0, 0.1, 200, EAST, False, "truncated")

    assert not truncated.ok
    assert faults.failure_reasons([truncated, truncated]) == "2 truncated"


def test_the_table_shows_a_failed_check_before_the_notes() -> None:
    result = faults.CaseResult(
        "service-kill",
        "lua",
        sent=2800,
        failed=3,
        misrouted=0,
        longest_gap_ms=41,
        notes="down 8.0s",
        checks=(faults.Check("failed while the service is down == 0", False),),
    )

    row = faults.markdown_table([result]).splitlines()[-1]

    assert row == (
        "| service-kill | lua | 2800 | 3 | 0 | 41 | CHECK FAILED: failed while the service is "
        "down == 0; down 8.0s |"
    )
    assert not result.passed


def test_the_reload_cases_bad_configs_are_rejected_and_their_good_ones_load() -> None:
    good = [seed_yaml(8000, 8000, interval="1s", base=base) for base in ("2s", "3s")]

    for text in good:
        assert load_policy_text(text, "good.yaml").services
    for text in faults.bad_configs(good[0]):
        with pytest.raises(ConfigError):
            load_policy_text(text, "bad.yaml")
