"""The attribution table (``tests/attribution.py``) against the ext_proc path's classifier.

``classify`` gives what the response headers record; a late reset adds what the access-log
receiver records for its entry. The e2e test runs the same table through a real Envoy.
"""

from __future__ import annotations

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from extproc.core.outcome import classify
from extproc.server.access_log import late_reset
from tests.attribution import CASES, UF, Case, normal

CHOSEN = "127.0.0.11"
PORT = 8443


def _reset_entry(case: Case) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.response.response_code_details = case.reset_details
    entry.response.response_code.value = case.status
    entry.common_properties.upstream_cluster = f"outbound|80||{case.id}.test"
    address = entry.common_properties.upstream_remote_address.socket_address
    address.address, address.port_value = CHOSEN, PORT
    return entry


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_classifier_records_what_the_table_says(case: Case) -> None:
    outcome = classify(case.status, case.details, case.flags, case.attempts, moved=case.moved)
    chosen = outcome.results
    reset = late_reset(_reset_entry(case))
    assert (reset is not None) == case.late_reset
    if reset is not None:
        # The access log's LocalOriginConnectFailed, after the head's answer.
        assert reset.host == f"{CHOSEN}:{PORT}"
        chosen += (UF,)
    codes = frozenset(case.error_codes)
    assert [normal(r, codes) for r in chosen] == [normal(r, codes) for r in case.chosen]
    assert outcome.elsewhere == case.other
