"""Fuzzing the config loader: whatever the YAML, a Policy or a ConfigError, never a crash.

Inputs: random text, random YAML documents, and random mutations of valid configs (the
seed's files, the shipped ``envoy/mydb.yaml`` and a few that reach TLS, distribute,
failoverPriority and portLevelSettings): keys renamed, dropped and duplicated, values
replaced by values of other types, documents wrapped in a ``kind: List``, bytes of the text
changed. Every outcome must be a ``Policy`` that serves something, or a ``ConfigError``
whose every problem is located: a file, and an object and field path where it has them.

Examples per test come from the hypothesis profile (``tests/conftest.py``): ``ci`` by
default, ``fuzz`` (10,000 each) from ``scripts/fuzz``.
"""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any, Final

import yaml
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.policy import Locality, Policy, Workload
from extproc.errors import ConfigError, Problem
from extproc.istio import check_summary, load_policy, load_policy_text, locality_warnings

ROOT: Final = Path(__file__).parents[2]
SOURCE: Final = "fuzz.yaml"

_EXTRA_SEEDS: Final = """\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: multi, namespace: prod, labels: {app: db}}
spec:
  hosts: [a.example.com, "*.wild.example.com"]
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 8443, name: https-alt, protocol: HTTP2}
  - {number: 9443, name: tls, protocol: TLS}
  resolution: STATIC
  subjectAltNames: [a.example.com]
  endpoints:
  - {address: 127.0.0.1, locality: r1/z1/s1, labels: {app: db}, weight: 3, network: n1}
  - {address: 127.0.0.2, locality: r2/z2, ports: {http: 8081}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: multi, annotations: {extproc.io/upstream-sni: authority}}
spec:
  host: a.example.com
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
      localityLbSetting:
        distribute:
        - {from: r1/z1/*, to: {"r1/*": 70, "r2/*": 30}}
    outlierDetection:
      consecutive5xxErrors: 2
      consecutiveGatewayErrors: 1
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 3
      interval: 1s
      baseEjectionTime: 500ms
      maxEjectionPercent: 50
      minHealthPercent: 10
      outlierDetectionHttpErrorCodes: [500, 503]
    connectionPool: {tcp: {connectTimeout: 250ms}}
    tls: {mode: SIMPLE, sni: a.example.com, subjectAltNames: [a.example.com]}
    portLevelSettings:
    - port: {number: 8443}
      loadBalancer:
        localityLbSetting:
          failoverPriority: [topology.istio.io/network, app]
          failover: [{from: r1, to: r2}]
      outlierDetection: {consecutive5xxErrors: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wild}
spec:
  host: "*.wild.example.com"
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: false}}
    connectionPool: {http: {maxRetries: 3}, tcp: {maxConnections: 10}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: other}
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: vs}
  spec:
    hosts: [mydb.com]
    http:
    - name: db
      match:
      - {headers: {x-tenant: {exact: a}}, uri: {prefix: /t}, method: {exact: GET}}
      - {withoutHeaders: {x-debug: {}}, queryParams: {q: {regex: "[a-z]+"}}, port: 80}
      route: [{destination: {host: mydb.com, port: {number: 80}}}]
      timeout: 2s
      retries: {attempts: 2, retryOn: "5xx,503", perTryTimeout: 1s}
"""


def _seed_configs() -> list[list[Any]]:
    """Each seed config as its list of documents (the files must load as they are)."""
    texts = [p.read_text() for p in sorted((ROOT / "tests/fixtures/seed").glob("*.yaml"))]
    texts += [(ROOT / "envoy/mydb.yaml").read_text(), _EXTRA_SEEDS]
    configs = []
    for text in texts:
        load_policy_text(text, SOURCE)  # a seed that does not load is a broken seed
        configs.append([d for d in yaml.safe_load_all(text) if d is not None])
    return configs


SEEDS: Final = _seed_configs()

# ---------------------------------------------------------------------------------------------
# The property


# The kind and name in front are the YAML's own strings, whatever they hold (str() escapes).
_DOCUMENT = re.compile(
    r"^(?:.+ \()?document \d+(?:, items\[\d+\](?:\.items\[\d+\])*)?\)?$", re.DOTALL
)


def _check_located(problem: Problem) -> None:
    assert isinstance(problem, Problem)
    assert problem.file, problem
    assert problem.message, problem
    # An object's problem names the object: "document 2", 'ServiceEntry "x" (document 2)'.
    assert problem.document == "" or _DOCUMENT.match(problem.document), problem
    _check_printable(str(problem))
    if problem.path:
        assert problem.document, problem  # a field path is always inside an object


def _check_printable(line: str) -> None:
    """One line, no empty segment, and printable as UTF-8 (a terminal, a JSON log)."""
    assert ": : " not in line, line
    assert line.isprintable(), line
    line.encode("utf-8")


def _check_problems(problems: tuple[Problem, ...]) -> None:
    assert problems, "a ConfigError lists its problems"
    for problem in problems:
        _check_located(problem)


def _loads_or_reports(text: str, **options: Any) -> Policy | None:
    """Load ``text``: a Policy that serves something, or a ConfigError of located problems."""
    try:
        policy = load_policy_text(text, SOURCE, **options)
    except ConfigError as exc:
        _check_problems(exc.problems)
        return None
    assert isinstance(policy, Policy)
    assert policy.services, "a policy that serves nothing is an error"
    for warning in policy.warnings:
        assert str(warning).startswith(f"{SOURCE}: "), warning
        _check_located(warning)
    # What check prints for it must not fail either.
    workload = Workload(Locality.parse("r1/z1/s1"))
    assert check_summary(policy, workload)
    assert isinstance(locality_warnings(policy, workload), list)
    return policy


def _dump(documents: list[Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# Strategies

# Words the loader knows, so random documents reach past the first checks.
_WORDS: Final = tuple(
    re.findall(
        r"\S+",
        "apiVersion kind metadata name spec status hosts ports number protocol targetPort "
        "resolution endpoints address locality labels weight network host trafficPolicy "
        "loadBalancer simple localityLbSetting failover from to distribute failoverPriority "
        "enabled outlierDetection consecutive5xxErrors interval baseEjectionTime "
        "maxEjectionPercent tls mode sni items List ServiceEntry DestinationRule "
        "networking.istio.io/v1 v1 DNS STATIC HTTP TCP SIMPLE 1s 0 -1",
    )
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(_WORDS),
)
keys = st.one_of(st.sampled_from(_WORDS), st.text(max_size=12), st.integers(-3, 3))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


@st.composite
def random_objects(draw: st.DrawFn) -> dict[Any, Any]:
    """A mapping that looks enough like a Kubernetes object to get past the first checks."""
    obj: dict[Any, Any] = draw(st.dictionaries(keys, values, max_size=4))
    obj["apiVersion"] = draw(
        st.sampled_from(
            ["networking.istio.io/v1", "networking.istio.io/v1alpha3", "v1", "apps/v1", "x"]
        )
        | values
    )
    obj["kind"] = draw(
        st.sampled_from(["ServiceEntry", "DestinationRule", "List", "VirtualService", "Pod"])
        | values
    )
    obj["metadata"] = draw(st.fixed_dictionaries({"name": st.sampled_from(["a", "b"])}) | values)
    obj["spec"] = draw(values)
    if draw(st.booleans()):
        obj["items"] = draw(st.lists(values, max_size=3))
    return obj


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        root = root[part]
    return root


def _typo(draw: st.DrawFn, word: str) -> str:
    """``word`` with one character dropped, doubled, swapped, replaced or its case changed."""
    if not word:
        return draw(st.text(min_size=1, max_size=3))
    i = draw(st.integers(0, len(word) - 1))
    edit = draw(st.sampled_from(["drop", "double", "swap", "replace", "case"]))
    if edit == "drop":
        return word[:i] + word[i + 1 :]
    if edit == "double":
        return word[:i] + word[i] + word[i:]
    if edit == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if edit == "case":
        return word.swapcase()
    return word[:i] + draw(st.characters(codec="utf-8")) + word[i + 1 :]


def _nudged(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same type, near the edges the checks care about."""
    if isinstance(value, bool):
        return st.just(not value)
    if isinstance(value, int):
        edges = [0, 1, -1, 99, 100, 101, 599, 600, 65535, 65536, 2**32 - 1, 2**32, 2**63]
        return st.sampled_from(edges) | st.integers(-(2**64), 2**64)
    if isinstance(value, str):
        durations = ["0", "1ms", "999us", "1.5ms", "1h", "-1s", "2562048h", "1x", ""]
        return st.sampled_from([*durations, *_WORDS, value.upper(), f"*.{value}"]) | st.text(
            max_size=8
        )
    return st.just(value)


@st.composite
def mutated_configs(draw: st.DrawFn) -> list[Any]:
    """A seed config with a few random edits; each edit picks a spot anywhere in it."""
    documents = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(documents) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(documents, path)
        last = path[-1]
        action = draw(
            st.sampled_from(
                [
                    "drop",
                    "rename",
                    "replace",
                    "retype",
                    "null",
                    "duplicate",
                    "move",
                    "listify",
                    "nudge",
                    "nudge",
                ]
            )
        )
        if action == "drop":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict) and isinstance(last, str):
            parent[_typo(draw, last)] = parent.pop(last)
        elif action == "replace":
            parent[last] = draw(values)
        elif action == "retype":
            value = parent[last]
            parent[last] = draw(
                st.sampled_from(
                    [str(value), [value], {"value": value}, len(str(value)), not value, -1]
                )
            )
        elif action == "null":
            parent[last] = None
        elif action == "duplicate":
            if isinstance(parent, list):
                parent.insert(last, copy.deepcopy(parent[last]))
            elif isinstance(last, str):
                parent[_typo(draw, last)] = copy.deepcopy(parent[last])
        elif action == "move" and isinstance(parent, dict) and len(path) > 1:
            # The field one level up, where it does not belong.
            grandparent = _parent(documents, path[:-1])
            if isinstance(grandparent, dict):
                grandparent[last] = parent.pop(last)
        elif action == "listify":
            parent[last] = [parent[last], copy.deepcopy(parent[last])]
        elif action == "nudge":
            parent[last] = draw(_nudged(parent[last]))
    if draw(st.booleans()):  # as `kubectl get -o yaml` prints it, sometimes
        documents = [{"apiVersion": "v1", "kind": "List", "items": documents}]
    return documents


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    """A seed config's text with a few characters changed: YAML syntax, not structure."""
    text = _dump(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 8))
        text = text[:i] + draw(st.text(max_size=4)) + text[i + cut :]
    return text


# ---------------------------------------------------------------------------------------------
# Tests


@given(st.text(max_size=200))
def test_random_text_gives_a_policy_or_located_problems(text: str) -> None:
    _loads_or_reports(text)


@given(st.lists(random_objects() | values, min_size=1, max_size=4))
def test_random_yaml_documents_give_a_policy_or_located_problems(documents: list[Any]) -> None:
    _loads_or_reports(_dump(documents))


@given(mutated_configs(), st.booleans(), st.booleans())
def test_mutated_configs_give_a_policy_or_located_problems(
    documents: list[Any], strict: bool, always_eject_one_host: bool
) -> None:
    _loads_or_reports(_dump(documents), strict=strict, always_eject_one_host=always_eject_one_host)


@given(mutated_texts())
def test_mutated_yaml_text_gives_a_policy_or_located_problems(text: str) -> None:
    _loads_or_reports(text)


@given(st.binary(max_size=300))
def test_random_file_bytes_give_a_policy_or_located_problems(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mydb.yaml"
        path.write_bytes(data)
        try:
            policy = load_policy(path)
        except ConfigError as exc:
            problems = exc.problems
        else:
            assert policy.services
            return
    _check_problems(problems)
    assert {p.file for p in problems} == {str(path)}
