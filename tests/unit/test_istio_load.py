"""Reading Istio YAML: YAML 1.2 scalars, documents, files and directories, and where errors are."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from extproc.errors import ConfigError, Problem
from extproc.istio import load_policy, load_policy_text
from extproc.istio.load import Document, load_path, load_text

SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts: [mydb.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"""

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: db
spec:
  host: mydb.com
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
"""


def _value(text: str) -> object:
    loaded = load_text(f"v: {text}\n")
    assert loaded.errors == ()
    (document,) = loaded.documents
    assert isinstance(document.data, dict)
    return document.data["v"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("on", "on", id="on-stays-a-string"),
        pytest.param("off", "off", id="off-stays-a-string"),
        pytest.param("yes", "yes", id="yes-stays-a-string"),
        pytest.param("No", "No", id="No-stays-a-string"),
        pytest.param("y", "y", id="y-stays-a-string"),
        pytest.param("1:30", "1:30", id="sexagesimal-int-stays-a-string"),
        pytest.param("1:30.5", "1:30.5", id="sexagesimal-float-stays-a-string"),
        pytest.param("1_000", "1_000", id="underscore-int-stays-a-string"),
        pytest.param("2024-01-01", "2024-01-01", id="date-stays-a-string"),
        pytest.param("=", "=", id="equals-sign-stays-a-string"),
        pytest.param("15s", "15s", id="duration-is-a-string"),
        pytest.param("true", True, id="true-is-a-boolean"),
        pytest.param("False", False, id="False-is-a-boolean"),
        pytest.param("TRUE", True, id="TRUE-is-a-boolean"),
        pytest.param("80", 80, id="decimal-int"),
        pytest.param("-3", -3, id="negative-int"),
        pytest.param("0755", 755, id="leading-zero-is-decimal"),
        pytest.param("0o17", 15, id="0o-is-octal"),
        pytest.param("0x1f", 31, id="0x-is-hex"),
        pytest.param("1.5", 1.5, id="float"),
        pytest.param("1e3", 1000.0, id="float-with-exponent"),
        pytest.param("null", None, id="null"),
        pytest.param("~", None, id="tilde-is-null"),
        pytest.param('"true"', "true", id="quoted-true-is-a-string"),
    ],
)
def test_plain_scalars_follow_yaml_1_2_core_schema(text: str, expected: object) -> None:
    value = _value(text)
    assert value == expected
    assert type(value) is type(expected)


@given(st.integers(min_value=-(2**63), max_value=2**63))
def test_any_decimal_integer_reads_back_as_itself(number: int) -> None:
    assert _value(str(number)) == number


def test_merge_keys_still_work_and_may_override() -> None:
    loaded = load_text("base: &b {a: 1, b: 2}\nuse:\n  <<: *b\n  a: 3\n")
    assert loaded.documents[0].data == {"base": {"a": 1, "b": 2}, "use": {"a": 3, "b": 2}}


def test_empty_documents_are_skipped_but_counted() -> None:
    loaded = load_text("---\n# nothing\n---\na: 1\n---\n---\nb: 2\n", "f.yaml")
    assert loaded.documents == (
        Document("f.yaml", 2, {"a": 1}),
        Document("f.yaml", 4, {"b": 2}),
    )


def test_a_leading_separator_does_not_add_a_document() -> None:
    loaded = load_text("# header\n---\na: 1\n", "f.yaml")
    assert loaded.documents == (Document("f.yaml", 1, {"a": 1}),)


def test_syntax_error_names_file_document_and_line() -> None:
    text = "a: 1\n---\nb: 2\nc: [1, 2\nd: 3\n"
    loaded = load_text(text, "bad.yaml")
    assert loaded.documents == (Document("bad.yaml", 1, {"a": 1}),)
    assert loaded.errors == (
        Problem(
            "bad.yaml",
            "document 2",
            "",
            "YAML error at line 5, column 2: expected ',' or ']', but got ':'",
        ),
    )


def test_duplicate_key_is_an_error_with_its_line() -> None:
    loaded = load_text("spec:\n  host: a.com\n  host: b.com\n", "dup.yaml")
    assert loaded.errors == (
        Problem(
            "dup.yaml", "document 1", "", 'YAML error at line 3, column 3: duplicate key "host"'
        ),
    )


def test_directory_reads_yaml_and_yml_files_sorted_and_not_recursively(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("b: 1\n")
    (tmp_path / "a.yaml").write_text("a: 1\n---\na: 2\n")
    (tmp_path / "c.txt").write_text("c: 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text("d: 1\n")
    loaded = load_path(tmp_path)
    assert loaded.documents == (
        Document(str(tmp_path / "a.yaml"), 1, {"a": 1}),
        Document(str(tmp_path / "a.yaml"), 2, {"a": 2}),
        Document(str(tmp_path / "b.yml"), 1, {"b": 1}),
    )
    assert loaded.errors == loaded.warnings == ()


def test_empty_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path)
    assert caught.value.problems == (
        Problem(
            str(tmp_path),
            "",
            "",
            "no ServiceEntry in this directory (no *.yaml or *.yml file): nothing to serve",
        ),
    )
    assert str(caught.value) == (
        f"{tmp_path}: no ServiceEntry in this directory (no *.yaml or *.yml file): nothing to serve"
    )


def test_missing_file_is_an_error_without_an_empty_segment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_policy(missing)
    assert caught.value.problems == (
        Problem(str(missing), "", "", "cannot read: No such file or directory"),
    )
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    loaded = load_path(bad)
    assert loaded.errors == (
        Problem(str(bad), "", "", "not UTF-8 text (invalid continuation byte at byte 9)"),
    )


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    file = tmp_path / "bom.yaml"
    file.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_path(file).documents == (Document(str(file), 1, {"a": 1}),)


def test_policy_from_a_directory_joins_objects_across_files(tmp_path: Path) -> None:
    (tmp_path / "1-se.yaml").write_text(SE)
    (tmp_path / "2-dr.yml").write_text(DR)
    policy = load_policy(tmp_path)
    (service,) = policy.services
    assert service.lb_algorithm.value == "ROUND_ROBIN"
    assert service.source == f'{tmp_path / "1-se.yaml"}: ServiceEntry "db"'


def test_problems_of_every_file_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: [\n")
    (tmp_path / "b.yaml").write_text(SE.replace("number: 80", "number: 0"))
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'a.yaml'}: document 1: YAML error at line 2, column 1: "
        "expected the node content, but found '<stream end>'",
        f'{tmp_path / "b.yaml"}: ServiceEntry "db" (document 1): spec.ports[0].number: '
        "port number 0 must be in the range 1..65535",
    ]


def test_a_yaml_1_1_boolean_is_not_a_boolean_to_istio() -> None:
    text = DR.replace(
        "loadBalancer: {simple: ROUND_ROBIN}", "loadBalancer: {localityLbSetting: {enabled: on}}"
    )
    with pytest.raises(ConfigError) as caught:
        load_policy_text(SE + "---\n" + text, "cfg.yaml")
    assert [str(p) for p in caught.value.problems] == [
        'cfg.yaml: DestinationRule "db" (document 2): '
        "spec.trafficPolicy.loadBalancer.localityLbSetting.enabled: "
        'must be true or false, got "on" (only true and false are booleans)'
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "- a\n- b\n", "expected a Kubernetes object (a mapping), got a list", id="list"
        ),
        pytest.param(
            "just text\n", 'expected a Kubernetes object (a mapping), got "just text"', id="scalar"
        ),
    ],
)
def test_a_document_that_is_not_a_mapping_is_an_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy_text(SE + "---\n" + text, "x.yaml")
    assert caught.value.problems == (Problem("x.yaml", "document 2", "", message),)


def test_config_error_lists_every_problem_one_per_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy_text("- a\n---\n- b\n", "x.yaml")
    assert str(caught.value) == (
        "x.yaml: document 1: expected a Kubernetes object (a mapping), got a list\n"
        "x.yaml: document 2: expected a Kubernetes object (a mapping), got a list\n"
        "x.yaml: no ServiceEntry in this file (read: 2 without a kind): nothing to serve"
    )


# ---------------------------------------------------------------------------------------------
# kind: List (kubectl get -o yaml)


def _list_of(*texts: str, kind: str = "List", api_version: str = "v1") -> str:
    items = [yaml.safe_load(t) for t in texts]
    listed = {"apiVersion": api_version, "kind": kind, "items": items, "metadata": {}}
    return yaml.safe_dump(listed, sort_keys=False)


def test_a_kind_list_is_read_as_its_items() -> None:
    policy = load_policy_text(_list_of(SE, DR), "got.yaml")
    (service,) = policy.services
    assert service.lb_algorithm.value == "ROUND_ROBIN"  # the DestinationRule item applied
    assert service.source == 'got.yaml: ServiceEntry "db"'
    assert policy.objects == (("DestinationRule", 1), ("ServiceEntry", 1))


def test_a_typed_list_is_read_as_its_items() -> None:
    text = _list_of(SE, kind="ServiceEntryList", api_version="networking.istio.io/v1")
    assert len(load_policy_text(text).services) == 1


def test_problems_in_a_list_name_the_document_and_the_item() -> None:
    bad = SE.replace("number: 80", "number: 0")
    with pytest.raises(ConfigError) as caught:
        load_policy_text(DR + "---\n" + _list_of(DR, DR, bad), "got.yaml")
    assert [str(p) for p in caught.value.problems] == [
        'got.yaml: ServiceEntry "db" (document 2, items[2]): spec.ports[0].number: '
        "port number 0 must be in the range 1..65535",
    ]


def test_a_list_inside_a_list_is_read_too() -> None:
    inner = _list_of(SE)
    text = _list_of(DR, inner)
    loaded = load_text(text, "got.yaml")
    assert [d.item for d in loaded.documents] == ["items[0]", "items[1].items[0]"]
    assert len(load_policy_text(text).services) == 1


def test_a_list_whose_items_are_not_a_list_is_an_error() -> None:
    loaded = load_text("apiVersion: v1\nkind: List\nitems: {a: 1}\n", "got.yaml")
    assert loaded.errors == (
        Problem("got.yaml", "document 1", "items", "must be a list, got a mapping"),
    )


def test_a_list_that_contains_itself_through_an_alias_is_an_error() -> None:
    loaded = load_text("&top\napiVersion: v1\nkind: List\nitems: [*top]\n", "got.yaml")
    assert loaded.documents == ()
    assert loaded.errors == (
        Problem(
            "got.yaml",
            "document 1, items[0]",
            "",
            "this List is one of its own items (a YAML alias)",
        ),
    )


# ---------------------------------------------------------------------------------------------
# A config that serves nothing is an error


@pytest.mark.parametrize(
    ("text", "found"),
    [
        pytest.param("", "no object at all", id="empty"),
        pytest.param("---\n", "no object at all", id="separator-only"),
        pytest.param("# mydb.yaml, being written\n", "no object at all", id="comment-only"),
        pytest.param("---\n---\n# x\n", "no object at all", id="empty-documents"),
        pytest.param(DR, "read: 1 DestinationRule", id="destination-rules-only"),
        pytest.param(
            "apiVersion: v1\nkind: List\nitems: []\n", "no object at all", id="empty-list"
        ),
    ],
)
def test_a_config_without_a_service_entry_is_an_error_naming_the_file(
    text: str, found: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy_text(text, "mydb.yaml")
    assert [str(p) for p in caught.value.problems] == [
        f"mydb.yaml: no ServiceEntry in this file ({found}): nothing to serve"
    ]


def test_a_directory_without_a_service_entry_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "dr.yaml").write_text(DR)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path}: no ServiceEntry in this directory (read: 1 DestinationRule): nothing to serve"
    ]


def test_service_entries_without_an_http_port_are_an_error() -> None:
    tcp = SE.replace("protocol: HTTP", "protocol: TCP")
    with pytest.raises(ConfigError) as caught:
        load_policy_text(tcp, "mydb.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "mydb.yaml: no ServiceEntry in this file has an HTTP port (GRPC, HTTP, HTTP2 or unset; "
        "1 ServiceEntry read): nothing to serve"
    ]


# ---------------------------------------------------------------------------------------------
# Standard input


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


@pytest.mark.parametrize("path", ["-", Path("-")], ids=["str", "path"])
def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch, path: str | Path) -> None:
    _stdin(monkeypatch, (SE + "---\n" + DR).encode())
    (service,) = load_policy(path).services
    assert service.source == '<stdin>: ServiceEntry "db"'


def test_problems_on_standard_input_call_it_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, SE.replace("number: 80", "number: 0").encode())
    with pytest.raises(ConfigError) as caught:
        load_policy("-")
    assert str(caught.value) == (
        '<stdin>: ServiceEntry "db" (document 1): spec.ports[0].number: '
        "port number 0 must be in the range 1..65535"
    )


def test_empty_standard_input_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, b"")
    with pytest.raises(ConfigError) as caught:
        load_policy("-")
    assert (
        str(caught.value)
        == "<stdin>: no ServiceEntry in the input (no object at all): nothing to serve"
    )


def test_closed_standard_input_is_a_read_error(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    stream.close()
    monkeypatch.setattr(sys, "stdin", stream)
    with pytest.raises(ConfigError) as caught:
        load_policy("-")
    assert str(caught.value) == "<stdin>: cannot read: I/O operation on closed file."


# ---------------------------------------------------------------------------------------------
# strict


SIDECAR = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: db
"""


def test_strict_turns_every_warning_into_an_error(tmp_path: Path) -> None:
    text = SE + "---\n" + SIDECAR
    assert _texts(load_policy_text(text, "cfg.yaml").warnings) == (
        'cfg.yaml: Sidecar "db" (document 2): kind: "Sidecar" is not supported by extproc, ignored',
    )
    with pytest.raises(ConfigError) as caught:
        load_policy_text(text, "cfg.yaml", strict=True)
    assert [str(p) for p in caught.value.problems] == [
        'cfg.yaml: Sidecar "db" (document 2): kind: "Sidecar" is not supported by extproc, ignored',
    ]
    file = tmp_path / "cfg.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError):
        load_policy(file, strict=True)


def test_strict_keeps_errors_first_and_adds_the_warnings() -> None:
    text = SE.replace("number: 80", "number: 0") + "---\n" + SIDECAR
    with pytest.raises(ConfigError) as caught:
        load_policy_text(text, "cfg.yaml", strict=True)
    assert [p.path for p in caught.value.problems] == ["spec.ports[0].number", "kind"]


def test_strict_accepts_a_config_without_warnings() -> None:
    assert len(load_policy_text(SE + "---\n" + DR, strict=True).services) == 1


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("\x00", "line 1, column 1", id="nul"),
        pytest.param("a: 1\nb: x\x01y\n", "line 2, column 5", id="control-character"),
    ],
)
def test_a_character_yaml_does_not_allow_is_an_error_with_its_place(text: str, where: str) -> None:
    loaded = load_text(text, "bin.yaml")
    assert loaded.documents == ()
    (problem,) = loaded.errors
    assert str(problem).startswith(f"bin.yaml: YAML error at {where}: character #x")


def test_yaml_nested_deeper_than_the_stack_is_an_error() -> None:
    loaded = load_text("a: " + "[" * 5000 + "]" * 5000, "deep.yaml")
    assert loaded.errors == (
        Problem("deep.yaml", "document 1", "", "YAML error: nested too deeply"),
    )


def test_a_kind_named_like_a_list_with_other_items_is_an_ordinary_object() -> None:
    loaded = load_text("apiVersion: x.io/v1\nkind: AllowList\nitems: {a: 1}\n", "a.yaml")
    assert loaded.errors == ()
    assert [d.item for d in loaded.documents] == [""]


def _texts(warnings: Iterable[Problem]) -> tuple[str, ...]:
    """Warnings as ``extproc check`` prints them (after ``warning: ``)."""
    return tuple(str(w) for w in warnings)
