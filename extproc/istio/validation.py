"""One object through Istio's validation: its kind and apiVersion, its shape, then its rules.

Two tiers, as in Istio (``pkg/config/validation``): an *error* rejects the whole configuration,
a *warning* is reported and tolerated. Three steps for each object:

1. Kind and apiVersion: ``networking.istio.io``'s kinds (``api``), other API groups counted
   and skipped.
2. Shape (``models``, ``findings``): field names against Istio's API, then the pydantic models
   in strict mode, as the Kubernetes API server checks a CRD's OpenAPI schema.
3. Meaning: the rules of ``ValidateServiceEntry``/``ValidateDestinationRule``
   (``pkg/config/validation/validation.go``, here ``service_entry_rules`` and
   ``traffic_policy_rules``) and of ``pkg/config/validation/agent`` (``field_rules``).

No file is read here: the TLS files a DestinationRule names are checked by ``preflight``, after
validation. Cross-object rules (which DestinationRule applies to which host) live in
``compile``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from extproc.istio import api
from extproc.istio.findings import (
    Checker,
    Findings,
    Parsed,
    Source,
    near_group,
    pydantic_problem,
    suggest,
    walk_fields,
)
from extproc.istio.literal import describe, show
from extproc.istio.models import API_VERSIONS, MODELS, ServiceEntry, VirtualService
from extproc.istio.service_entry_rules import check_service_entry
from extproc.istio.traffic_policy_rules import check_destination_rule
from extproc.istio.virtual_service_rules import check_virtual_service

__all__ = ["Checked", "check_object"]


@dataclass(frozen=True, slots=True)
class Checked:
    """An object of Istio's shape, and whether one of the rules rejected it.

    A rejected object is not compiled, but its TLS files are still checked (``preflight``),
    so one report lists every problem of the object.
    """

    parsed: Parsed
    rejected: bool


def check_object(
    data: object, file: str, index: int, findings: Findings, item: str = ""
) -> Checked | None:
    """Validate one object; return it if it is a ServiceEntry or DestinationRule of Istio's shape.

    Every problem found is appended to ``findings``. ``None`` is returned for objects whose
    shape is wrong (errors), for the other kinds of ``networking.istio.io`` (a warning each)
    and for objects of other API groups (their kind goes to ``findings.skipped``). ``item``
    locates an object inside a List document (``items[2]``).
    """
    if not isinstance(data, dict):
        check = Checker(Source(file, index, item=item), findings)
        check.error("", f"expected a Kubernetes object (a mapping), got {describe(data)}")
        return None
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    source = Source(
        file,
        index,
        kind if isinstance(kind, str) else "",
        name if isinstance(name, str) else "",
        item,
    )
    check = Checker(source, findings)
    if kind is None:
        check.error("kind", "is required")
        return None
    if not isinstance(kind, str):
        check.error("kind", f"must be a string, got {show(kind)}")
        return None
    if kind not in MODELS:
        _check_other_kind(data, kind, check)
        return None
    return _check_istio_object(_with_api_version(data, kind, check), kind, check)


def _with_api_version(
    data: dict[object, object], kind: str, check: Checker
) -> dict[object, object]:
    """``data`` with an apiVersion that serves ``kind``: a wrong one is an error, then replaced.

    Validation goes on with a valid version: the rest of the object can still be checked.
    """
    api_version = data.get("apiVersion")
    if api_version in API_VERSIONS:
        return data
    if api_version is None:
        check.error("apiVersion", "is required")
    elif not isinstance(api_version, str):
        check.error("apiVersion", f"must be a string, got {show(api_version)}")
    else:
        message = f"{show(api_version)} is not supported for {kind}; use {', '.join(API_VERSIONS)}"
        if (near := near_group(api_version)) is not None:
            message += f"; did you mean {show(near)}?"
        check.error("apiVersion", message)
    return {**data, "apiVersion": API_VERSIONS[0]}


def _check_istio_object(data: dict[object, object], kind: str, check: Checker) -> Checked | None:
    """Steps 2 and 3 for a ServiceEntry or a DestinationRule."""
    model = MODELS[kind]
    # Names first, on the raw mapping: a misspelt field is an error even where the shape
    # of the object is wrong too (``spc`` for ``spec`` also leaves ``spec`` missing).
    walk_fields(model, data, api.SHAPES[kind], "", check)
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path, message = pydantic_problem(error)
            check.error(path, message)
        return None

    if not obj.metadata.name:
        check.error("metadata.name", "is required")
    if isinstance(obj, ServiceEntry):
        check_service_entry(obj, check)
    elif isinstance(obj, VirtualService):
        check_virtual_service(obj, check)
    else:
        check_destination_rule(obj, check)
    return Checked(Parsed(check.source, obj), rejected=check.failed)


def _check_other_kind(data: Mapping[object, object], kind: str, check: Checker) -> None:
    """Any kind but ServiceEntry and DestinationRule.

    In ``networking.istio.io`` a kind the API does not have is an error (the API server has
    no such resource), with the nearest kind; a real one is a warning. Objects of other API
    groups are only counted (``Findings.skipped``); a group one typo away from Istio's is
    an error.
    """
    api_version = data.get("apiVersion")
    if api_version is None:
        check.error("apiVersion", "is required")
        return
    if not isinstance(api_version, str):
        check.error("apiVersion", f"must be a string, got {show(api_version)}")
        return
    group, _, version = api_version.rpartition("/")
    if group != api.GROUP:
        near = near_group(api_version)
        if near is None and not group and kind in api.KINDS:
            # The core group (v1) has no Istio kind: the group was left out.
            served = api.KINDS[kind]
            near = f"{api.GROUP}/{version if version in served else served[0]}"
            check.error(
                "apiVersion", f"{show(api_version)} has no {kind}; did you mean {show(near)}?"
            )
            return
        if near is None:
            check.findings.skipped.append(kind)
            return
        check.error(
            "apiVersion", f"{show(api_version)} is not an API version; did you mean {show(near)}?"
        )
        version = near.rpartition("/")[2]
    versions = api.KINDS.get(kind)
    if versions is None:
        message = f"{show(kind)} is not a kind of {api.GROUP}"
        if (suggestion := suggest(kind, api.KINDS)) is not None:
            message += f"; did you mean {show(suggestion)}?"
        else:
            message += f" (its kinds: {', '.join(api.KINDS)})"
        check.error("kind", message)
        return
    if version not in versions:
        check.error(
            "apiVersion",
            f"{show(api_version)} is not served for {kind}; use "
            + ", ".join(f"{api.GROUP}/{v}" for v in versions),
        )
        return
    check.warn("kind", f"{show(kind)} is not supported by extproc, ignored")
