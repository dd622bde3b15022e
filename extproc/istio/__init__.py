"""Istio YAML (ServiceEntry + DestinationRule) to a validated, compiled ``Policy``.

    load_policy("mesh/")            # a file, or every *.yaml/*.yml of a directory
    load_policy("-")                # standard input (``<stdin>`` in messages)
    load_policy_text(text, "demo")  # the same from a string

The modules, in the order a config goes through them:

    load                  YAML text to documents (YAML 1.2 scalars; a ``kind: List``'s items)
    validation            one object: kind and apiVersion, shape, then the rules (entry point)
      api                 Istio's kinds and field names, as the CRDs have them
      models              the pydantic models of ServiceEntry and DestinationRule (shape)
      duration            Go durations: the parser and the model type
      findings            Source, Findings, Checker; pydantic errors and field names in words
      service_entry_rules ValidateServiceEntry's rules
      traffic_policy_rules ValidateDestinationRule's rules (traffic policy, annotation)
      field_rules         the agent package's rules: names, ports, durations, TLS, localities
      literal             how a value the user wrote appears in a message
    preflight             after validation: the TLS files a DestinationRule names can be read
    compile               DestinationRules joined to ServiceEntry hosts, Istio's defaults
      upstream_tls        a ``tls`` compiled to ``TlsSettings``; the SNI the endpoints get
    summary               what a policy means for one workload (``extproc check``)

Every problem of every step is collected; if any is an error, ``ConfigError`` carries them
all and nothing is returned. Warnings end up in ``Policy.warnings`` as ``Problem`` values
(or, with ``strict``, are errors too). A config that serves nothing (no ServiceEntry) is an
error: a reload to an empty file must not drop every route.

Rules of the room: pure functions of the YAML, called from any thread (the server loads off
the event loop). No network, no grpc, no asyncio, no logging; the only I/O is reading the
given files (or standard input) in ``load`` and the ``preflight`` file checks. Imports
``extproc.core`` (the values it builds) and ``extproc.errors``, nothing above them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from extproc.core.policy import Policy
from extproc.errors import ConfigError, Problem
from extproc.istio.compile import HTTP_PROTOCOLS, compile_services
from extproc.istio.findings import Findings, Parsed
from extproc.istio.load import Loaded, load_path, load_text
from extproc.istio.models import ServiceEntry
from extproc.istio.preflight import tls_file_problems
from extproc.istio.summary import check_summary, locality_warnings
from extproc.istio.validation import check_object

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
        checked = check_object(data, document.file, document.index, findings, document.item)
        if checked is None:
            continue
        unreadable = tls_file_problems(checked.parsed)
        findings.errors.extend(unreadable)
        if not checked.rejected and not unreadable:
            objects.append(checked.parsed)
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
        warnings=tuple(all_warnings),
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
