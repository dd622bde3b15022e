"""Values in messages as the user wrote them: strings quoted, mappings and lists named.

One spelling for every step (reading YAML, checking shapes and rules), so a value looks the same
in every message: ``"80"`` is the string, ``80`` the number, ``true`` the YAML boolean.
"""

from __future__ import annotations

import json

__all__ = ["describe", "show"]


def show(value: object) -> str:
    """A value as a user wrote it: strings quoted, mappings and lists described."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return describe(value)
    return str(value)


def describe(value: object) -> str:
    """What ``value`` is, where a mapping or a list was not expected: ``a mapping``."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return show(value)
