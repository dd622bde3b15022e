"""Where a finding is and how it is collected: ``Source``, ``Findings``, ``Checker``.

Also the findings of the shape step, which come before any rule: pydantic's errors in Istio's
words with a dotted path (``spec.ports[0].number: must be an integer, got "80"``), and every
field name checked against Istio's API (``api``): a name Istio does not have is an error with
the nearest one (``consecutive5xxError``: did you mean ``consecutive5xxErrors``?), as the API
server refuses it; an Istio field extproc does not implement is a warning naming its dotted
path ("not supported yet, ignored"). No field is dropped silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, get_args

from pydantic_core import ErrorDetails

from extproc.errors import Problem
from extproc.istio import api
from extproc.istio.literal import show
from extproc.istio.models import API_VERSIONS, IstioObject, Model

__all__ = [
    "NOT_YET",
    "Checker",
    "Findings",
    "Parsed",
    "Source",
    "model_in",
    "near_group",
    "pydantic_problem",
    "suggest",
    "walk_fields",
]

NOT_YET: Final = "not supported yet, ignored"


@dataclass(frozen=True, slots=True)
class Source:
    """Where an object came from: file, position in the file, kind and name.

    ``item`` locates an object inside a ``kind: List`` document (``items[2]``).
    """

    file: str
    index: int
    kind: str = ""
    name: str = ""
    item: str = ""

    @property
    def position(self) -> str:
        """``document 2``, or ``document 1, items[2]`` for an item of a List."""
        return f"document {self.index}, {self.item}" if self.item else f"document {self.index}"

    @property
    def document(self) -> str:
        """``DestinationRule "mydynamodb" (document 2)``, as ``Problem.document`` wants it."""
        position = self.position
        if self.kind and self.name:
            return f'{self.kind} "{self.name}" ({position})'
        if self.kind:
            return f"{self.kind} ({position})"
        return position

    def cite(self) -> str:
        """Name this object in another one's message: ``ServiceEntry "x" (a.yaml, document 1)``."""
        return f'{self.kind} "{self.name}" ({self.file}, {self.position})'

    def problem(self, path: str, message: str) -> Problem:
        return Problem(self.file, self.document, path, message)


@dataclass(slots=True)
class Findings:
    """Errors and warnings found so far, in the order found.

    ``skipped`` holds the kind of each object of another API group (a Deployment, a
    Service): they are reported together, in one warning, by whoever reads the whole config.
    """

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Parsed:
    """An object that passed validation, with where it came from."""

    source: Source
    obj: IstioObject


class Checker:
    """Collects findings for one document."""

    def __init__(self, source: Source, findings: Findings) -> None:
        self.source = source
        self.findings = findings
        self.failed = False

    def error(self, path: str, message: str) -> None:
        self.failed = True
        self.findings.errors.append(self.source.problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.findings.warnings.append(self.source.problem(path, message))


# ---------------------------------------------------------------------------------------------
# The shape step: pydantic's errors and field names

_YAML11_BOOLEANS: Final = frozenset({"on", "off", "yes", "no", "y", "n"})

_TYPE_MESSAGES: Final[Mapping[str, str]] = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def pydantic_problem(error: ErrorDetails) -> tuple[str, str]:
    """Turn one pydantic error into a dotted path (``spec.ports[0].number``) and a message."""
    path = ""
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            path += f".{part}" if path else str(part)
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return path, "is required"
    if kind == "invalid_key":
        return path, f"keys must be strings, got {show(value)}"
    if kind in _TYPE_MESSAGES:
        message = f"{_TYPE_MESSAGES[kind]}, got {show(value)}"
        if kind == "bool_type" and isinstance(value, str) and value.lower() in _YAML11_BOOLEANS:
            message += " (only true and false are booleans)"
        return path, message
    return path, error["msg"]


def walk_fields(
    cls: type[Model] | None,
    data: Mapping[object, object],
    shape: api.Shape,
    path: str,
    check: Checker,
) -> None:
    """Check every field name of ``data`` against Istio's API (``shape``).

    A name the API does not have is an error, with the nearest name it has. An Istio field
    that ``cls`` does not declare is a warning (its ``IGNORED`` message, else NOT_YET); below
    it (``cls`` is ``None``) names are still checked, but nothing is warned about twice.
    ``data`` is the raw mapping, so findings follow the user's key order.
    """
    names = shape.field_names()
    by_alias = {} if cls is None else {i.alias or n: i for n, i in cls.model_fields.items()}
    for key, value in data.items():
        if not isinstance(key, str):
            if cls is None and value is not None:  # where a model reads, pydantic says so
                check.error(_join(path, str(key)), f"keys must be strings, got {show(key)}")
            continue
        here = _join(path, key)
        child_shape = (shape.fields or {}).get(key)
        if child_shape is None:
            # Even a null one: the API server's strict decoding knows no such field (a YAML
            # flow mapping's unquoted comma makes one: {retryOn: a,b} has a key "b").
            check.error(here, _unknown_field(key, names))
            continue
        if value is None:  # null is unset (see Model._drop_nulls)
            continue
        child: type[Model] | None = None
        if cls is None:
            pass
        elif key in cls.IGNORED:
            if (message := cls.IGNORED[key]) is not None:
                check.warn(here, message)
        elif key in by_alias:
            child = model_in(by_alias[key].annotation)
        elif cls.WARN_UNIMPLEMENTED:
            check.warn(here, NOT_YET)
        _walk_value(child, value, child_shape, here, check)


def _walk_value(
    cls: type[Model] | None, value: object, shape: api.Shape, path: str, check: Checker
) -> None:
    """``walk_fields`` for whatever ``value`` is: an object, a list of them, a map of them."""
    if shape.open:
        return
    if shape.fields is not None and isinstance(value, dict):
        walk_fields(cls, value, shape, path, check)
    elif shape.items is not None and isinstance(value, list):
        for i, item in enumerate(value):
            _walk_value(cls, item, shape.items, f"{path}[{i}]", check)
    elif shape.values is not None and isinstance(value, dict):
        for key, item in value.items():
            _walk_value(None, item, shape.values, _join(path, str(key)), check)


def _unknown_field(key: str, names: Sequence[str]) -> str:
    """``unknown field; did you mean "trafficPolicy"?``, else the names there are."""
    if (suggestion := suggest(key, names)) is not None:
        return f"unknown field; did you mean {show(suggestion)}?"
    if not names:
        return "unknown field"
    if len(names) <= _LISTED_NAMES:
        return f"unknown field; expected one of {', '.join(names)}"
    return "unknown field"


# Up to this many field names are listed when none is near an unknown one.
_LISTED_NAMES: Final = 12


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def model_in(annotation: Any) -> type[Model] | None:
    """The model class a field holds: ``X``, ``X | None`` or ``list[X]``; else ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return annotation
    for arg in get_args(annotation):
        if (found := model_in(arg)) is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------
# Suggestions


def near_group(api_version: str) -> str | None:
    """``networking.istio.io/<version>`` when ``api_version``'s group is a typo of it.

    A group one or two characters away (``networking.istio.oi``, ``Networking.istio.io``,
    a missing version) is a typo; ``networking.k8s.io`` (Ingress, NetworkPolicy) is not.
    """
    group, slash, version = api_version.rpartition("/")
    if not slash and "." in api_version:  # "networking.istio.io": a group, no version
        group, version = api_version, ""
    if group == api.GROUP and version:
        return None
    if difflib.SequenceMatcher(None, group.lower(), api.GROUP).ratio() < _GROUP_TYPO_RATIO:
        return None
    return f"{api.GROUP}/{version or API_VERSIONS[0].rpartition('/')[2]}"


# A group this close to networking.istio.io is taken for a typo (networking.istio.oi: 0.95;
# networking.k8s.io, a real group: 0.83).
_GROUP_TYPO_RATIO: Final = 0.9


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` most likely misspells (``difflib``), or ``None``.

    A match that differs only in case wins; otherwise ``difflib.get_close_matches`` with its
    default cutoff (0.6), compared in lower case.
    """
    names = list(candidates)
    by_lower = {name.lower(): name for name in names}
    if (same := by_lower.get(word.lower())) is not None and same != word:
        return same
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close else None
