"""The sync protocol's report lines: what a Lua worker sends -> the results to record."""

from __future__ import annotations

from extproc.core.outlier import AttemptResult
from extproc.core.reports import Report, parse_reports

EAST = "10.0.0.1:443"
WEST = "10.0.0.2:443"


def test_parse_reports_keeps_order_and_skips_garbage() -> None:
    body = f"s {EAST} 3\nnonsense\ne {EAST} 503\ne {WEST} x\n\ns {WEST} 1\n"
    assert parse_reports(body) == [
        Report("s", EAST, 3),
        Report("e", EAST, 503),
        Report("s", WEST, 1),
    ]


def test_the_last_word_of_an_error_line_names_the_local_origin_failure() -> None:
    body = f"e {EAST} 503 c\ne {EAST} 503 r\ne {EAST} 504 t\ne {EAST} 503\ns {WEST} 2\n"
    assert [r.result for r in parse_reports(body)] == [
        AttemptResult.connect_failure(),
        AttemptResult.reset(),
        AttemptResult.timeout(),
        AttemptResult.answer(503),
        AttemptResult.success(),
    ]


def test_an_overflow_line_is_a_count_for_the_service_and_names_no_host() -> None:
    body = f"o - 4\no {EAST} 1\no - x\ns {WEST} 2\n"
    reports = parse_reports(body)
    assert reports == [Report("o", "-", 4), Report("s", WEST, 2)]
    assert [(r.overflow, r.count) for r in reports] == [(True, 4), (False, 2)]
