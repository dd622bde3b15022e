"""Istio YAML (ServiceEntry + DestinationRule) to a validated, compiled ``Policy``.

    load_policy("mesh/")            # a file, or every *.yaml/*.yml of a directory
    load_policy_text(text, "demo")  # the same from a string

Three steps, each in its module: ``load`` splits YAML into documents, ``schema`` checks each
document against Istio's API and validation rules, ``compile`` joins DestinationRules to
ServiceEntry hosts and applies Istio's defaults. Every problem of every step is collected;
if any is an error, ``ConfigError`` carries them all and nothing is returned. Warnings end up
in ``Policy.warnings``. This package does no I/O beyond reading the given files and checking
that the TLS files a DestinationRule names can be read.
"""

from __future__ import annotations

from pathlib import Path

from extproc.core.policy import Policy
from extproc.errors import ConfigError
from extproc.istio.compile import compile_policy
from extproc.istio.load import Loaded, load_path, load_text
from extproc.istio.schema import Findings, Parsed, parse_object

__all__ = ["load_policy", "load_policy_text"]


def load_policy(path: str | Path, *, always_eject_one_host: bool = True) -> Policy:
    """Load the Istio objects of a file or directory into a ``Policy``.

    Args:
        path: a YAML file (``---``-separated documents) or a directory of ``*.yaml``/``*.yml``.
        always_eject_one_host: let the first ejection of a service happen whatever
            ``maxEjectionPercent`` says (Envoy's flag; the rule before Envoy 1.28).

    Returns:
        The compiled policy; ``Policy.warnings`` lists what was ignored or looks wrong.

    Raises:
        ConfigError: listing every problem found (file, document, field path, message).
    """
    return _build(load_path(path), always_eject_one_host)


def load_policy_text(
    text: str, source: str = "<string>", *, always_eject_one_host: bool = True
) -> Policy:
    """Like ``load_policy``, from YAML text; ``source`` stands for the file name in messages."""
    return _build(load_text(text, source), always_eject_one_host)


def _build(loaded: Loaded, always_eject_one_host: bool) -> Policy:
    findings = Findings(errors=list(loaded.errors), warnings=list(loaded.warnings))
    objects: list[Parsed] = []
    for document in loaded.documents:
        parsed = parse_object(document.data, document.file, document.index, findings)
        if parsed is not None:
            objects.append(parsed)
    try:
        policy = compile_policy(
            objects, always_eject_one_host=always_eject_one_host, warnings=findings.warnings
        )
    except ConfigError as exc:
        raise ConfigError([*findings.errors, *exc.problems]) from None
    if findings.errors:
        raise ConfigError(findings.errors)
    return policy
