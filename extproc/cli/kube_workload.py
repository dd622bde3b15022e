"""The workload's locality and labels on Kubernetes, found the way Istio finds them.

Theory of operation:

- **Labels** come from the pod itself, through the file a ``downwardAPI`` volume writes
  (``fieldRef: metadata.labels``), as Istio's injector gives them to the sidecar (the
  ``istio-podinfo`` volume, ``/etc/istio/pod/labels``). Kubernetes writes one
  ``key="value"`` line per label, the value quoted as Go's ``%q`` does (``fieldpath.FormatMap``);
  pilot-agent reads it back with ``ParseDownwardAPI`` (``pkg/bootstrap/config.go``). It needs
  no API permission at all. ``pod-template-hash`` is dropped, as ``getNodeMetaData`` drops it.
- **The locality** is, in order (Istio's ``getPodLocality`` in
  ``pilot/pkg/serviceregistry/kube/controller/controller.go``, and pilot-agent's
  ``getNodeMetaData``):
  1. the pod's ``topology.istio.io/locality`` label, else its ``istio-locality`` label
     (``model.GetLocalityLabel``: the first key present wins, even when empty), with dots
     read as slashes unless it has a slash already (``model.SanitizeLocalityLabel``:
     Kubernetes label values cannot hold ``/``); when one is found the node is not read;
  2. else the Node's labels: ``topology.kubernetes.io/region``, falling back to the beta
     ``failure-domain.beta.kubernetes.io/region``; the same for the zone; and
     ``topology.istio.io/subzone``.

  Istio gives a node without any of those labels no locality, and one with a zone but no
  region the locality ``/zone/...``: both match no endpoint's region, so locality failover
  would silently do nothing. extproc refuses to start instead (no region label: an error).

Everything here is pure except ``read_pod_labels`` (one file) and ``kubernetes_workload``,
which asks the API server for the Node through ``kube_api`` only when it must.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from extproc.core.locality import LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE
from extproc.core.policy import Locality
from extproc.errors import ExtprocError

log = structlog.get_logger(__name__)

Labels = tuple[tuple[str, str], ...]

#: The pod labels that override the node's locality, the first found winning
#: (``model.GetLocalityLabel``: ``label.TopologyLocality``, then ``model.LocalityLabel``).
POD_LOCALITY_LABEL = "topology.istio.io/locality"
LEGACY_LOCALITY_LABEL = "istio-locality"
#: The node labels Istio falls back to when the GA ones are unset or empty
#: (``NodeRegionLabel``/``NodeZoneLabel``, Kubernetes' ``LabelFailureDomainBeta*``).
BETA_REGION_LABEL = "failure-domain.beta.kubernetes.io/region"
BETA_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"
#: What a Deployment adds to its pods and pilot-agent leaves out of the proxy's labels
#: (``DefaultDeploymentUniqueLabelKey``).
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"

#: Where Istio's injector mounts the pod's labels (``constants.PodInfoLabelsPath``).
ISTIO_POD_LABELS_PATH = "/etc/istio/pod/labels"

# A node's name is a DNS subdomain (RFC 1123): lower-case, digits, '-' and '.'.
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def node_name(text: str) -> str:
    """``--locality-from-node``'s value: a Node's name, as the downward API's
    ``spec.nodeName`` gives it (an argparse type)."""
    if len(text) > 253 or not _NODE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a node name (a DNS subdomain: lower-case letters, digits, "
            "'-' and '.'); set it from the downward API's spec.nodeName"
        )
    return text


# --- the Node's labels -> Locality ------------------------------------------------------------


def node_locality(node: str, labels: Mapping[str, str]) -> Locality:
    """The locality of a pod on ``node``, from the Node's ``labels``.

    Mirrors the node half of Istio's ``getPodLocality``
    (``pilot/pkg/serviceregistry/kube/controller/controller.go``) and its ``getLabelValue``
    (the GA label, else the beta one when the GA one is unset or empty).

    Raises:
        ExtprocError: the node has no region label (Istio would serve it an empty region,
            which turns locality failover off without a word).
    """
    region = labels.get(LABEL_REGION) or labels.get(BETA_REGION_LABEL, "")
    zone = labels.get(LABEL_ZONE) or labels.get(BETA_ZONE_LABEL, "")
    sub_zone = labels.get(LABEL_SUBZONE, "")
    if not region:
        topology = {
            k: v
            for k, v in sorted(labels.items())
            if k.startswith(("topology.", "failure-domain."))
        }
        has = ", ".join(f"{k}={v}" for k, v in topology.items()) or "no topology label"
        raise ExtprocError(
            f"--locality-from-node {node}: the node has no {LABEL_REGION} label "
            f"(nor {BETA_REGION_LABEL}); it has {has}. Label the node (kubectl label node "
            f"{node} {LABEL_REGION}=REGION) or give --locality"
        )
    return Locality(region, zone, sub_zone)


# --- the pod's labels ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodLabels:
    """The pod's labels as the workload's, and the locality they give, if any."""

    labels: Labels
    locality: Locality | None  # from topology.istio.io/locality or istio-locality
    locality_label: str = ""  # which of the two gave it


def pod_labels(raw: Mapping[str, str]) -> PodLabels:
    """The workload's labels and locality from its pod's labels, as pilot-agent's
    ``getNodeMetaData`` (``pkg/bootstrap/config.go``) makes the proxy's.

    ``pod-template-hash`` is dropped; a locality label found (``model.GetLocalityLabel``)
    is read with dots as slashes (``model.SanitizeLocalityLabel``), and ``istio-locality``
    is set to that slash form, as Istio overrides it in the proxy's labels.
    """
    labels = {k: v for k, v in raw.items() if k != POD_TEMPLATE_HASH_LABEL}
    key = next((k for k in (POD_LOCALITY_LABEL, LEGACY_LOCALITY_LABEL) if k in labels), "")
    text = sanitize_locality_label(labels[key]) if key else ""
    if not text:
        return PodLabels(tuple(labels.items()), None)
    labels[LEGACY_LOCALITY_LABEL] = text
    return PodLabels(tuple(labels.items()), Locality.parse(text), key)


def sanitize_locality_label(value: str) -> str:
    """``region.zone.subzone`` -> ``region/zone/subzone``; a value with a slash is kept
    (Istio's ``model.SanitizeLocalityLabel``)."""
    return value if "/" in value else value.replace(".", "/")


def parse_downward_api(text: str, source: str) -> dict[str, str]:
    """The labels in a downward API file: ``key="value"`` lines, values Go-quoted.

    Stricter than pilot-agent's ``ParseDownwardAPI``, which skips a line without ``=``: a
    line that Kubernetes would not write is an error here, since it means the file is not
    the pod's labels. Blank lines are skipped; an empty file is a pod without labels.

    Raises:
        ExtprocError: naming ``source`` and the line, for a line that is not ``key="value"``,
            a value that is not a Go double-quoted string, or a key given twice.
    """
    labels: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        where = f"{source}:{number}"
        if not sep or not key or key != key.strip() or " " in key:
            raise ExtprocError(
                f'{where}: {_shown(line)} is not key="value" (a downward API file of '
                "metadata.labels)"
            )
        try:
            value = go_unquote(quoted)
        except ValueError as exc:
            raise ExtprocError(
                f"{where}: the value of {key!r} is not a Go-quoted string: {exc}"
            ) from None
        if key in labels:
            raise ExtprocError(f"{where}: label {key!r} is given twice")
        labels[key] = value
    return labels


def _shown(line: str, limit: int = 80) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "...")


# One piece of a Go double-quoted string's body: a run of plain characters or one escape.
_PIECE = re.compile(
    r'(?P<plain>[^\\"]+)'
    r"|\\(?P<simple>[abfnrtv\\\"])"
    r"|\\(?P<octal>[0-7]{3})"
    r"|\\x(?P<hex>[0-9A-Fa-f]{2})"
    r"|\\u(?P<u4>[0-9A-Fa-f]{4})"
    r"|\\U(?P<u8>[0-9A-Fa-f]{8})"
)
_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def go_unquote(text: str) -> str:
    """A Go double-quoted string literal's value, as ``strconv.Unquote`` reads it.

    Escapes: ``\\a \\b \\f \\n \\r \\t \\v \\\\ \\"``, ``\\NNN`` (octal) and ``\\xHH`` (bytes),
    ``\\uHHHH`` and ``\\UHHHHHHHH`` (code points); the bytes must make UTF-8.

    Raises:
        ValueError: saying what is wrong.
    """
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError(f"{_shown(text)} is not in double quotes")
    body, out, at = text[1:-1], bytearray(), 0
    while at < len(body):
        match = _PIECE.match(body, at)
        if match is None:
            what = "an unescaped quote" if body[at] == '"' else "a bad escape"
            raise ValueError(f"{what} at {_shown(body[at : at + 4])}")
        at = match.end()
        if (plain := match["plain"]) is not None:
            out += plain.encode()
        elif (simple := match["simple"]) is not None:
            out += _SIMPLE.get(simple, simple).encode()
        elif (octal := match["octal"]) is not None:
            if int(octal, 8) > 0xFF:
                raise ValueError(f"octal escape \\{octal} is above \\377")
            out.append(int(octal, 8))
        elif (hex_byte := match["hex"]) is not None:
            out.append(int(hex_byte, 16))
        else:
            point = int(match["u4"] or match["u8"], 16)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
                raise ValueError(f"U+{point:04X} is not a Unicode scalar value")
            out += chr(point).encode()
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"its bytes are not UTF-8 ({exc.reason})") from None


def read_pod_labels(path: Path) -> PodLabels:
    """The pod's labels from the downward API file ``path``.

    Raises:
        ExtprocError: the file cannot be read, or a line in it is not a label.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtprocError(
            f"--workload-labels-file {path}: cannot read: {exc}. Mount the pod's labels "
            "with a downwardAPI volume (items: path labels, fieldRef.fieldPath "
            f"metadata.labels), as Istio's injector does at {ISTIO_POD_LABELS_PATH}"
        ) from exc
    return pod_labels(parse_downward_api(text, f"--workload-labels-file {path}"))


# --- how the sources combine ------------------------------------------------------------------


def kubernetes_workload(
    *,
    locality: str | None,
    labels: Labels,
    labels_file: Path | None,
    node: str | None,
    node_labels: Callable[[str], Mapping[str, str]] | None = None,
) -> tuple[Locality, Labels]:
    """The workload's locality and labels from the flags and the pod, by Istio's precedence.

    Args:
        locality: ``--locality`` as given, or None.
        labels: ``--workload-labels``.
        labels_file: ``--workload-labels-file``, or None.
        node: ``--locality-from-node``, or None.
        node_labels: reads a Node's labels (default: ``kube_api.read_node_labels``); only
            called when no pod label gives the locality.

    Raises:
        ExtprocError: two sources are given for the same thing (``--locality`` with
            ``--locality-from-node`` or with a pod locality label, ``--workload-labels``
            with ``--workload-labels-file``), or a source fails.
    """
    if locality and node:
        raise ExtprocError(
            "--locality ($EXTPROC_LOCALITY) and --locality-from-node "
            "($EXTPROC_LOCALITY_FROM_NODE) are both set: give one"
        )
    if labels and labels_file is not None:
        raise ExtprocError(
            "--workload-labels ($EXTPROC_WORKLOAD_LABELS) and --workload-labels-file "
            "($EXTPROC_WORKLOAD_LABELS_FILE) are both set: give one (on Kubernetes, add "
            "the labels to the pod)"
        )
    pod = read_pod_labels(labels_file) if labels_file is not None else None
    if pod is not None:
        labels = pod.labels
        if pod.locality is not None:
            if locality:
                raise ExtprocError(
                    f"--locality {locality} and the pod's {pod.locality_label} label (in "
                    f"--workload-labels-file {labels_file}) both give the locality: drop one"
                )
            # Istio's getPodLocality: the pod's label wins and the node is not looked up.
            source = f"pod label {pod.locality_label}"
            if node:
                source += f" (node {node} not read)"
            log.info("workload.locality", locality=str(pod.locality), source=source)
            return pod.locality, labels
    if node is None:
        return Locality.parse(locality or ""), labels
    if node_labels is None:
        from extproc.cli.kube_api import read_node_labels

        node_labels = read_node_labels
    found = node_locality(node, node_labels(node))
    log.info("workload.locality", locality=str(found), source=f"node {node}")
    return found, labels
