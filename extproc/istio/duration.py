"""Go durations (``"15s"``, ``"1m30s"``): the parser, and the model type that holds one.

Istio's CRDs take Go's ``time.ParseDuration`` syntax (``google.protobuf.Duration`` written as a
string); the rules on a duration's value (at least 1ms, whole milliseconds) are validation's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Annotated, Final

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from extproc.istio.literal import show

__all__ = ["GoDuration", "parse_duration"]

_DURATION_UNIT_NS: Final[Mapping[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")
_MAX_NS: Final = 2**63 - 1


def parse_duration(text: str) -> int | None:
    """Parse a Go duration (``"15s"``, ``"1m30s"``, ``"500ms"``, ``"1.5h"``) into nanoseconds.

    Istio's CRDs take Go's ``time.ParseDuration`` syntax, so this follows it: an optional
    sign, then one or more decimal numbers each with a unit (ns, us, µs, ms, s, m, h); a bare
    ``"0"`` is allowed. Returns ``None`` when ``text`` is not such a duration.
    """
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        return None
    total = Fraction(0)
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:  # pragma: no cover - the pattern matches the empty string
            return None
        number, unit = match.groups()
        if number in ("", ".") or unit not in _DURATION_UNIT_NS:
            return None
        total += Fraction(number) * _DURATION_UNIT_NS[unit]
        pos = match.end()
    nanos = int(total)  # Go truncates below a nanosecond
    if nanos > _MAX_NS:
        return None
    return -nanos if negative else nanos


def _duration_text(value: object) -> object:
    """Pydantic hook: a duration must be a string in Go syntax."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError(
            "duration_type",
            '{value} is not a duration (write a string with a unit, e.g. "{value}s")',
            {"value": value},
        )
    if not isinstance(value, str):
        raise PydanticCustomError(
            "duration_type", "{value} is not a duration", {"value": show(value)}
        )
    if parse_duration(value) is None:
        raise PydanticCustomError(
            "duration_parsing", "{text} is not a duration", {"text": json.dumps(value)}
        )
    return value


#: A model field holding a Go duration, kept as written (``parse_duration`` reads it).
GoDuration = Annotated[str, BeforeValidator(_duration_text)]
