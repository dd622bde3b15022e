"""Read Istio YAML: one file of ``---``-separated documents, or a directory of them.

Kubernetes manifests are read by Go's YAML libraries, which never turn ``on``/``off``/``yes``/``no``
into booleans nor ``1:30`` into 90; PyYAML's ``SafeLoader`` follows YAML 1.1 and does both. The
loader here resolves plain scalars with the YAML 1.2 core schema instead (``true``/``false`` are
the only booleans; integers are decimal, ``0o`` octal or ``0x`` hex; no timestamps), so a value
means what it means to ``kubectl``. Duplicate keys are an error rather than "last one wins".

Nothing here knows about Istio kinds: it yields ``Document`` values and ``Problem`` values. It
knows one Kubernetes convention: a ``kind: List`` (what ``kubectl get -o yaml`` prints) is read
as its ``items``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from extproc.errors import Problem
from extproc.istio.literal import show

__all__ = ["STDIN", "Document", "Loaded", "load_path", "load_text"]

_YAML11_ONLY = frozenset(
    {
        "tag:yaml.org,2002:bool",  # yes/no/on/off
        "tag:yaml.org,2002:int",  # 0755 octal, 1_000, 1:30 sexagesimal
        "tag:yaml.org,2002:float",  # 1:30.5 sexagesimal, requires a dot
        "tag:yaml.org,2002:timestamp",  # 2024-01-01 -> datetime.date
        "tag:yaml.org,2002:value",  # "=" -> no constructor at all
    }
)

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution).
_BOOL_12 = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` with YAML 1.2 core scalars and an error on duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        # Check the keys written in this mapping; keys brought in by a "<<" merge may be
        # overridden on purpose, so they are left out.
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key "{key}"', key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # "0755" is 755 in YAML 1.2, not 493


_Loader.yaml_implicit_resolvers = {
    first: kept
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    if (kept := [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_ONLY])
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_12, list("tTfF"))
# int before float: both patterns match "80", and the first resolver that matches wins.
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_12, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


@dataclass(frozen=True, slots=True)
class Document:
    """One object of a YAML stream.

    ``index`` counts every document of the file's stream from 1, empty ones included, so
    "document 3" is the third ``---`` section a reader counts. ``item`` is set for an object
    read out of a ``kind: List`` document (``items[2]``, or ``items[0].items[1]`` for a List
    inside a List).
    """

    file: str
    index: int
    data: object
    item: str = ""


@dataclass(frozen=True, slots=True)
class Loaded:
    """The documents read, and the problems met while reading them.

    ``source`` names what was read in messages about the whole config (the file, the
    directory, ``<stdin>``); ``directory`` says it is a directory, ``files`` the files read.
    """

    documents: tuple[Document, ...] = ()
    errors: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    source: str = "<string>"
    directory: bool = False
    files: tuple[str, ...] = ()


@dataclass(slots=True)
class _Acc:
    source: str
    directory: bool = False
    documents: list[Document] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def freeze(self) -> Loaded:
        return Loaded(
            tuple(self.documents),
            tuple(self.errors),
            tuple(self.warnings),
            self.source,
            self.directory,
            tuple(self.files),
        )


#: The name standard input has in messages, as ``kubectl apply -f -`` reads it.
STDIN: Final = "<stdin>"


def load_text(text: str, source: str = "<string>") -> Loaded:
    """Split ``text`` into documents; ``source`` names it in problems."""
    acc = _Acc(source)
    acc.files.append(source)
    _read_stream(text, source, acc)
    return acc.freeze()


def load_path(path: str | Path) -> Loaded:
    """Read a file, every ``*.yaml``/``*.yml`` file of a directory (sorted, not recursive),
    or standard input for ``-``.

    A directory is read as one configuration: problems of every file are collected so that
    one report lists them all.
    """
    if str(path) == "-":
        return _read_stdin()
    path = Path(path)
    acc = _Acc(str(path), directory=path.is_dir())
    if acc.directory:
        files = sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.is_dir()
        )
        for file in files:
            _read_file(file, acc)
    else:
        _read_file(path, acc)
    return acc.freeze()


def _read_stdin() -> Loaded:
    acc = _Acc(STDIN)
    acc.files.append(STDIN)
    stream = sys.stdin
    try:
        # The bytes when there are (the BOM and UTF-8 checks of a file); else the text.
        buffer = getattr(stream, "buffer", None)
        data = buffer.read() if buffer is not None else stream.read().encode()
    except (OSError, ValueError, UnicodeError) as exc:  # closed, or not text
        acc.errors.append(Problem(STDIN, "", "", f"cannot read: {_reason(exc)}"))
        return acc.freeze()
    _read_bytes(data, STDIN, acc)
    return acc.freeze()


def _read_file(path: Path, acc: _Acc) -> None:
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        acc.errors.append(Problem(name, "", "", f"cannot read: {_reason(exc)}"))
        return
    acc.files.append(name)
    _read_bytes(data, name, acc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _read_bytes(data: bytes, name: str, acc: _Acc) -> None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        acc.errors.append(
            Problem(name, "", "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        )
        return
    _read_stream(text, name, acc)


def _read_stream(text: str, name: str, acc: _Acc) -> None:
    try:
        loader = _Loader(text)  # checks every character first
    except yaml.reader.ReaderError as exc:
        acc.errors.append(Problem(name, "", "", _describe_reader(exc, text)))
        return
    index = 0
    try:
        while loader.check_node():
            index += 1
            node = loader.get_node()
            data = loader.construct_document(node) if node is not None else None
            if data is not None:
                _add(data, name, index, "", acc, ())
    except yaml.MarkedYAMLError as exc:
        acc.errors.append(Problem(name, f"document {max(index, 1)}", "", _describe(exc)))
    except yaml.YAMLError as exc:  # errors without a position (e.g. a reader error)
        acc.errors.append(Problem(name, f"document {max(index, 1)}", "", f"invalid YAML: {exc}"))
    except RecursionError:  # nesting deeper than Python's stack (PyYAML recurses)
        acc.errors.append(
            Problem(name, f"document {max(index, 1)}", "", "YAML error: nested too deeply")
        )
    finally:
        loader.dispose()


def _add(
    data: object, name: str, index: int, item: str, acc: _Acc, within: tuple[int, ...]
) -> None:
    """Add one object, or the items of a List (``kubectl get -o yaml``) one by one.

    Kubernetes' convention (``meta.IsListType``): a kind ending in ``List`` with an ``items``
    list, such as ``v1 List`` or ``networking.istio.io/v1 ServiceEntryList``; kubectl reads
    the items of a List inside a List too. ``within`` holds the Lists this one is inside, so
    a YAML alias cannot make a List its own item.
    """
    if not _is_list(data):
        acc.documents.append(Document(name, index, data, item))
        return
    assert isinstance(data, dict)
    where = f"document {index}, {item}" if item else f"document {index}"
    items = data.get("items")
    if items is None:
        return  # an empty List
    if not isinstance(items, list):
        acc.errors.append(Problem(name, where, "items", f"must be a list, got {show(items)}"))
        return
    if id(data) in within:
        acc.errors.append(
            Problem(name, where, "", "this List is one of its own items (a YAML alias)")
        )
        return
    for i, entry in enumerate(items):
        here = f"{item}.items[{i}]" if item else f"items[{i}]"
        _add(entry, name, index, here, acc, (*within, id(data)))


def _is_list(data: object) -> bool:
    """``kind: List`` with ``items``, or a typed list (``ServiceEntryList``) with an items list."""
    if not isinstance(data, dict) or "items" not in data:
        return False
    kind = data.get("kind")
    if kind == "List":
        return True
    return isinstance(kind, str) and kind.endswith("List") and isinstance(data["items"], list)


def _describe_reader(exc: yaml.reader.ReaderError, text: str) -> str:
    """A character YAML does not allow (NUL, most C0 controls), with its line and column."""
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    character = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return f"YAML error at line {line}, column {column}: character #x{character:04x} is not allowed"


def _describe(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or exc.context or "invalid YAML"
    return f"YAML error{where}: {problem}"
