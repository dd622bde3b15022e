"""The report parser of the sync protocol: the lines a Lua worker sends -> attempt results.

Envoy's Lua filter (``render/bridge.lua``) reports, oldest first, what one worker saw since
its last sync, one line each (plain text: LuaJIT has no JSON library and ``gmatch`` is
cheap)::

    s <ip:port> <n>        n upstream answers that are not errors (not 5xx, or not listed
                           in the table's ``codes=`` line): they reset the counters
    e <ip:port> <status>   one upstream answer the detector counts: a 5xx, or any status
                           the ``codes=`` line lists (outlierDetectionHttpErrorCodes)
    e <ip:port> <code> c|r|t
                           one attempt that got no answer (local origin): ``c`` no
                           connection (UF), ``r`` reset or closed after connecting (UC, UR,
                           UPE), ``t`` timed out after connecting (UT); ``code`` is what
                           Envoy's non-split detector counts (503, or 504 for ``t``)
    o - <n>                n requests Envoy answered 503 itself because a connection-pool
                           limit was reached (UO): counted, never an endpoint's result

A script that predates the last word sends ``e <ip:port> 503`` for a local-origin failure
too; outside split mode and without error codes that counts the same. The sync endpoint
(``server/sync.py``) applies the reports and answers the routing table.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.core.outlier import AttemptResult

#: The last word of an ``e`` line -> what the outlier detector records.
_LOCAL_ORIGIN = {
    "c": AttemptResult.connect_failure(),
    "r": AttemptResult.reset(),
    "t": AttemptResult.timeout(),
}

#: The most digits a number of a report line has: a status, a success count (far above
#: what one worker sees in one table's TTL).
_STATUS_DIGITS = 3
_COUNT_DIGITS = 9


@dataclass(frozen=True, slots=True)
class Report:
    """One line of a sync body."""

    kind: str  # "s", "e" or "o"
    host: str  # "-" for "o"
    value: int  # successes for "s", the status code for "e", overflows for "o"
    origin: str = ""  # "e" only: "c", "r" or "t" (no answer, see above), "" an answer

    @property
    def result(self) -> AttemptResult:
        """What the outlier detector records for this line (once, for ``s``)."""
        if self.kind == "s":
            return AttemptResult.success()
        return _LOCAL_ORIGIN.get(self.origin) or AttemptResult.answer(self.value)

    @property
    def count(self) -> int:
        """How many attempts the line stands for: ``n`` for ``s`` and ``o``, one for ``e``."""
        return 1 if self.kind == "e" else self.value

    @property
    def overflow(self) -> bool:
        """An ``o`` line: requests no endpoint answered, never recorded as a result."""
        return self.kind == "o"


def _number(word: str, digits: int) -> int | None:
    """``word`` as a number of 1 to ``digits`` ASCII digits, else None.

    ``str.isdigit`` alone would let through what ``int`` refuses (``"²"``, more than 4,300
    digits) and other scripts' digits, which Lua never writes.
    """
    if len(word) <= digits and word.isascii() and word.isdigit():
        return int(word)
    return None


def parse_reports(body: str) -> list[Report]:
    """Parse a sync body; malformed lines are skipped (a bad worker cannot stop the others)."""
    reports = []
    for line in body.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("s", "e", "o"):
            if parts[0] == "o" and parts[1] != "-":
                continue
            value = _number(parts[2], _STATUS_DIGITS if parts[0] == "e" else _COUNT_DIGITS)
            if value is not None:
                reports.append(Report(parts[0], parts[1], value))
        elif len(parts) == 4 and parts[0] == "e" and parts[3] in _LOCAL_ORIGIN:
            value = _number(parts[2], _STATUS_DIGITS)
            if value is not None:
                reports.append(Report("e", parts[1], value, parts[3]))
    return reports
