"""Istio YAML (ServiceEntry + DestinationRule) to a validated, compiled ``Policy``.

    load_policy("mesh/")            # a file, or every *.yaml/*.yml of a directory
    load_policy("-")                # standard input (``<stdin>`` in messages)
    load_policy_text(text, "demo")  # the same from a string

Three steps, each in its module: ``load`` splits YAML into documents (and a ``kind: List``
into its items), ``schema`` checks each object against Istio's API (``api``) and
validation rules, ``compile`` joins DestinationRules to ServiceEntry hosts and applies
Istio's defaults. Every problem of every step is collected; if any is an error,
``ConfigError`` carries them all and nothing is returned. Warnings end up in
``Policy.warnings`` (or, with ``strict``, are errors too). A config that serves nothing (no
ServiceEntry) is an error: a reload to an empty file must not drop every route. This
package does no I/O beyond reading the given files (or standard input) and checking that
the TLS files a DestinationRule names can be read. ``summary`` describes a loaded policy
for ``extproc check``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from extproc.core.policy import Policy
from extproc.errors import ConfigError, Problem
from extproc.istio.compile import HTTP_PROTOCOLS, compile_services
from extproc.istio.load import Loaded, load_path, load_text
from extproc.istio.schema import Findings, Parsed, ServiceEntry, parse_object
from extproc.istio.summary import check_summary, locality_warnings

__all__ = ["check_summary", "load_policy", "load_policy_text", "locality_warnings"]


def load_policy(
    path: str | Path, *, always_eject_one_host: bool = True, strict: bool = False
) -> Policy:
    """Load the Istio objects of a file, a directory or standard input into a ``Policy``.

    Args:
        path: a YAML file (``---``-separated documents), a directory of ``*.yaml``/``*.yml``,
            or ``-`` for standard input.
        always_eject_one_host: let the first ejection of a service happen whatever
            ``maxEjectionPercent`` says (Envoy's flag; the rule before Envoy 1.28).
        strict: every warning is an error too (CI's ``--strict``).

    Returns:
        The compiled policy; ``Policy.warnings`` lists what was ignored or looks wrong.

    Raises:
        ConfigError: listing every problem found (file, document, field path, message).
    """
    return _build(load_path(path), always_eject_one_host, strict)


def load_policy_text(
    text: str,
    source: str = "<string>",
    *,
    always_eject_one_host: bool = True,
    strict: bool = False,
) -> Policy:
    """Like ``load_policy``, from YAML text; ``source`` stands for the file name in messages."""
    return _build(load_text(text, source), always_eject_one_host, strict)


def _build(loaded: Loaded, always_eject_one_host: bool, strict: bool) -> Policy:
    findings = Findings(errors=list(loaded.errors), warnings=list(loaded.warnings))
    objects: list[Parsed] = []
    kinds: Counter[str] = Counter()
    for document in loaded.documents:
        data = document.data
        if isinstance(data, dict) and isinstance(kind := data.get("kind"), str):
            kinds[kind] += 1
        parsed = parse_object(data, document.file, document.index, findings, document.item)
        if parsed is not None:
            objects.append(parsed)
    if findings.skipped:
        findings.warnings.append(_skipped(loaded.source, findings.skipped))
    try:
        services, warnings = compile_services(
            objects, always_eject_one_host=always_eject_one_host, source=loaded.source
        )
    except ConfigError as exc:
        raise ConfigError([*findings.errors, *exc.problems]) from None
    errors = findings.errors
    if not kinds["ServiceEntry"] and not loaded.errors:  # (unreadable YAML says so itself)
        errors.append(_no_service_entry(loaded, kinds))
    elif not services and not errors:
        errors.append(_no_http_port(loaded, objects))
    all_warnings = [*findings.warnings, *warnings]
    if strict:
        errors = [*errors, *all_warnings]
    if errors:
        raise ConfigError(errors)
    return Policy(
        services=services,
        warnings=tuple(str(w) for w in all_warnings),
        objects=tuple(sorted(kinds.items())),
    )


def _skipped(source: str, kinds: Sequence[str]) -> Problem:
    """One line for every object of another API group (Deployments, Services, ...)."""
    counts = sorted(Counter(kinds).items(), key=lambda c: (-c[1], c[0]))
    listed = ", ".join(f"{n} {kind}" for kind, n in counts)
    objects = (
        "1 object of another API group"
        if len(kinds) == 1
        else f"{len(kinds)} objects of other API groups"
    )
    return Problem(
        source, "", "", f"{objects} skipped ({listed}): extproc reads networking.istio.io only"
    )


def _what(loaded: Loaded) -> str:
    if loaded.directory:
        return "this directory"
    return "the input" if loaded.source == "<stdin>" else "this file"


def _no_service_entry(loaded: Loaded, kinds: Counter[str]) -> Problem:
    """A config that serves nothing is an error (an empty file, a reload caught mid-write)."""
    if loaded.directory and not loaded.files:
        found = "no *.yaml or *.yml file"
    elif not loaded.documents:
        found = "no object at all"
    else:
        read = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
        if untyped := len(loaded.documents) - sum(kinds.values()):
            read.append(f"{untyped} without a kind")
        found = "read: " + ", ".join(read)
    return Problem(
        loaded.source, "", "", f"no ServiceEntry in {_what(loaded)} ({found}): nothing to serve"
    )


def _no_http_port(loaded: Loaded, objects: Sequence[Parsed]) -> Problem:
    count = sum(isinstance(p.obj, ServiceEntry) for p in objects)
    protocols = ", ".join(sorted(p for p in HTTP_PROTOCOLS if p)) + " or unset"
    return Problem(
        loaded.source,
        "",
        "",
        f"no ServiceEntry in {_what(loaded)} has an HTTP port ({protocols}; "
        f"{count} ServiceEntr{'y' if count == 1 else 'ies'} read): nothing to serve",
    )
