"""The project's exception tree.

ExtprocError
├── ConfigError        a config file is invalid; carries every problem found
└── StartupError       Envoy or the service could not start
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a config file, located like ``istioctl analyze`` does."""

    file: str  # the file, or the directory or ``<stdin>`` for the config as a whole
    document: str  # e.g. 'DestinationRule "mydynamodb" (document 2)'; "" for the whole file
    path: str  # dotted field path, e.g. "spec.trafficPolicy.outlierDetection.interval"
    message: str

    def __str__(self) -> str:
        # Empty parts are left out: "nope.yaml: cannot read: ...", never "nope.yaml: : ...".
        parts = [p for p in (self.file, self.document, self.path) if p]
        return _printable(": ".join([*parts, self.message]))


def _printable(text: str) -> str:
    """``text`` on one line and encodable: control characters and lone surrogates escaped.

    Names and keys come from the YAML as written, and a quoted YAML string may hold any of
    them (``"a\\nb"``, ``"\\ud800"``); one problem stays one line that UTF-8 can print.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in text
    )


class ExtprocError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(ExtprocError):
    """The configuration is invalid; nothing of it was applied."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StartupError(ExtprocError):
    """A process or server needed by ``extproc up`` did not start."""
