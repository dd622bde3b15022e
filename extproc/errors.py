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

    file: str
    document: str  # e.g. 'DestinationRule "mydynamodb" (document 2)'
    path: str  # dotted field path, e.g. "spec.trafficPolicy.outlierDetection.interval"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.document}"
        if self.path:
            where += f": {self.path}"
        return f"{where}: {self.message}"


class ExtprocError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(ExtprocError):
    """The configuration is invalid; nothing of it was applied."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StartupError(ExtprocError):
    """A process or server needed by ``extproc up`` did not start."""
