"""Reading a spec file into plain data plus the line and column of every value in it.

YAML positions come from PyYAML's node marks. `tomllib` keeps no positions, so TOML values are
located by a small scanner over the text (tables, array tables, keys, and the elements of
inline and multi-line arrays); where it cannot see deeper it falls back to the nearest parent.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from moldbatch.errors import Diagnostic, MoldbatchError

PathKey = tuple  # ("shots", 2, "frames")
# The spec language nests a few levels (shots[].clips[].keyframes[]...): a document nested far
# deeper is refused with one line, before a parser or validator recurses out of stack
MAX_DEPTH = 32


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep; a spec needs a few"


class _LOADER(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """libyaml's parser when PyYAML was built with it (several times faster; same nodes and
    marks), reading `5e-1` and `1e2` as numbers as YAML 1.2 does (1.1 wants a dot)."""


_LOADER.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Source:
    file: str  # as shown in diagnostics
    path: Path
    data: object
    positions: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    # how a path is shown in diagnostics (a translated source shows its own field names)
    rename: Callable[[PathKey], PathKey] = field(default=lambda path: path)
    # read from a mold chain script: its own motion tail is kept (spec/mold.py)
    mold: bool = False

    def locate(self, path: PathKey, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the value at `path`, or of its nearest known parent."""
        table = self.key_positions if key else self.positions
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if key and p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return (1, 1)

    def diag(self, path: PathKey, message: str, severity: str = "error", *, key=False):
        line, col = self.locate(path, key=key)
        return Diagnostic(self.file, line, col, format_path(self.rename(path)), message, severity)


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            out += f"[{json.dumps(str(part))}]"  # a key no one meant to write: show it exactly
        else:
            out += ("." if out else "") + str(part)
    return out


class SourceError(MoldbatchError):
    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic
        super().__init__(str(diagnostic))


def read_source(path: Path, file: str | None = None) -> Source:
    file = file or str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM some editors write is no error
    except FileNotFoundError:
        raise SourceError(Diagnostic(file, 1, 1, "", "no such file", code="missing-file")) from None
    except IsADirectoryError:
        raise SourceError(Diagnostic(file, 1, 1, "", "is a folder, not a spec file")) from None
    except UnicodeDecodeError as e:
        raise SourceError(Diagnostic(file, 1, 1, "", f"not UTF-8 text ({e.reason})")) from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _read_toml(text, path, file)
    if suffix in (".yaml", ".yml"):
        return _read_yaml(text, path, file)
    raise SourceError(
        Diagnostic(file, 1, 1, "", f"unknown spec format '{suffix}': use .yaml, .yml or .toml")
    )


# --- YAML -------------------------------------------------------------------------------


def _read_yaml(text: str, path: Path, file: str) -> Source:
    src = Source(file, path, None)
    try:
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            if node is None:
                src.data = None
                return src
            src.data = _YamlWalk(src, loader).walk(node, ())
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = e.problem or e.context or "invalid YAML"
        raise SourceError(
            Diagnostic(
                file, line, col, "", f"invalid YAML: {problem}{_indent_hint(problem, text, line)}"
            )
        ) from None
    except yaml.YAMLError as e:
        raise SourceError(Diagnostic(file, 1, 1, "", f"invalid YAML: {e}")) from None
    except RecursionError:
        raise SourceError(Diagnostic(file, 1, 1, "", f"invalid YAML: {_too_deep()}")) from None
    return src


# what PyYAML says when a line is indented wrongly
_INDENT_PROBLEMS = (
    "did not find expected",
    "mapping values are not allowed",
    "expected <block end>",
    "could not find expected ':'",
)


def _indent_hint(problem: str, text: str, line: int) -> str:
    """A hint for a YAML error that is an indentation slip (`line`: 1-based)."""
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in here[: len(here) - len(here.lstrip())]:
        return "; this line is indented with a tab: YAML indents with spaces only"
    if any(p in problem for p in _INDENT_PROBLEMS):
        return (
            "; check the indentation of this line and the one above: the keys of one "
            "mapping line up, and a nested mapping is indented further than its key"
        )
    return ""


_STR, _MERGE, _VALUE = (f"tag:yaml.org,2002:{t}" for t in ("str", "merge", "value"))


class _YamlWalk:
    """Builds the data from the node tree, recording where every value and key stands."""

    # aliases can make a small file expand without limit ("billion laughs"): count the values
    # an alias repeats (not the document's own, however long it is) and stop well before
    MAX_EXPANDED = 200_000

    def __init__(self, src: Source, loader):
        self.src, self.loader = src, loader
        self.seen: set[int] = set()  # nodes already built once: met again through an alias
        self.expanded = 0

    def fail(self, node, path: PathKey, message: str):
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        return SourceError(Diagnostic(self.src.file, line, col, format_path(path), message))

    def scalar(self, node, path: PathKey):
        if node.tag == _STR and type(node) is yaml.ScalarNode:  # most of a spec: no constructor
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError):
            # an explicit tag whose value does not fit it (`!!int abc`), or a number too long
            shown = node.value if len(str(node.value)) < 40 else str(node.value)[:37] + "..."
            message = f"cannot read {shown!r} as {node.tag.rsplit(':', 1)[-1]}"
            raise self.fail(node, path, message) from None

    def walk(self, node, path: PathKey):
        if id(node) in self.seen:
            self.expanded += 1
            if self.expanded > self.MAX_EXPANDED:
                raise self.fail(
                    node,
                    path,
                    f"the document expands to too many values through aliases (they repeat "
                    f"more than {self.MAX_EXPANDED:,}): use fewer aliases of aliases",
                )
        else:
            self.seen.add(id(node))
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path, _too_deep())
        mark = node.start_mark
        self.src.positions[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(v, path + (i,)) for i, v in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            return self.scalar(node, path)
        explicit = sum(1 for k, _ in node.value if k.tag != _MERGE)
        if explicit < len(node.value) or any(k.tag == _VALUE for k, _ in node.value):
            self.loader.flatten_mapping(node)  # merge keys (<<): merged pairs come first
        first_explicit = len(node.value) - explicit
        out, merged = {}, set()
        key_positions = self.src.key_positions
        for n, (knode, vnode) in enumerate(node.value):
            key = self.scalar(knode, path)
            if not isinstance(key, str):
                if not isinstance(key, (int, float, bool)):
                    raise self.fail(knode, path, "keys must be plain names")
                key = str(key)
            if key in out and key not in merged:
                raise self.fail(
                    knode, path + (key,), f"duplicate key '{key}': each key may appear once"
                )
            if first_explicit:
                if n < first_explicit:
                    merged.add(key)  # a key written explicitly may override a merged one
                else:
                    merged.discard(key)
            here = path + (key,)
            mark = knode.start_mark
            key_positions[here] = (mark.line + 1, mark.column + 1)
            out[key] = self.walk(vnode, here)
        return out


def _fmt(path: PathKey) -> str:
    return format_path(path)


# --- TOML -------------------------------------------------------------------------------

_TOML_ERR = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r'^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*=\s*'
)
_INLINE_KEY = re.compile(r'([A-Za-z0-9_-]+|"[^"]*")\s*=\s*')


def _read_toml(text: str, path: Path, file: str) -> Source:
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise SourceError(Diagnostic(file, 1, 1, "", f"invalid TOML: {_too_deep()}")) from None
    except ValueError as e:  # TOMLDecodeError, or an integer too long to convert
        if not isinstance(e, tomllib.TOMLDecodeError):
            raise SourceError(
                Diagnostic(
                    file, 1, 1, "", "invalid TOML: a number is far too long (over 4300 digits)"
                )
            ) from None
        msg = str(e)
        m = _TOML_ERR.search(msg)
        line, col = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
        msg = _TOML_ERR.sub("", msg).strip()
        raise SourceError(Diagnostic(file, line, col, "", f"invalid TOML: {msg}")) from None
    src = Source(file, path, data)
    _scan_toml(text, src)
    deep = _deeper_than(data, MAX_DEPTH)
    if deep is not None:
        line, col = src.locate(deep)
        raise SourceError(Diagnostic(file, line, col, format_path(deep), _too_deep()))
    return src


def _deeper_than(data, depth: int) -> PathKey | None:
    """The first path nested more than `depth` levels, or None (without recursing)."""
    stack = [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) > depth:
            return path
        if isinstance(value, dict):
            stack += [(path + (k,), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(path + (i,), v) for i, v in enumerate(value)]
    return None


def _split_dotted(key: str) -> list[str]:
    parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.\s]+', key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _scan_toml(text: str, src: Source) -> None:
    _TomlScanner(src).scan(text)


@dataclass
class _Open:
    """An inline array or table that is still open at the end of a line."""

    path: PathKey
    kind: str  # "[" or "{"
    index: int = 0
    expecting: bool = True  # an array waiting for its next element


class _TomlScanner:
    def __init__(self, src: Source):
        self.src = src
        self.table: PathKey = ()
        self.counts: dict[PathKey, int] = {}  # array table -> how many entries so far
        self.current: dict[PathKey, int] = {}  # array table -> the entry being filled
        self.stack: list[_Open] = []
        self.multiline: str | None = None

    def scan(self, text: str) -> None:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if self.multiline:
                if self.multiline in line:
                    self.multiline = None
                continue
            if self.stack:
                self.inline(line, 0, lineno)
            else:
                self.statement(line, lineno)

    def _resolve(self, name: PathKey) -> PathKey:
        """A header's path, with the current entry of each enclosing array table:
        `[[shots.clips]]` under the third `[[shots]]` is ("shots", 2, "clips")."""
        path: PathKey = ()
        for i, key in enumerate(name):
            path += (key,)
            if i < len(name) - 1 and path in self.current:
                path += (self.current[path],)
        return path

    def statement(self, line: str, lineno: int) -> None:
        src = self.src
        m = _HEADER.match(line)
        if m and not _KEY.match(line):
            path = self._resolve(tuple(_split_dotted(m.group(2))))
            if m.group(1) == "[[":
                idx = self.counts.get(path, 0)
                self.counts[path] = idx + 1
                self.current[path] = idx
                self.table = path + (idx,)
            else:
                self.table = path
            pos = (lineno, line.index("[") + 1)
            for i in range(1, len(self.table) + 1):
                src.positions.setdefault(self.table[:i], pos)
            src.key_positions.setdefault(self.table, pos)
            return
        m = _KEY.match(line)
        if not m:
            return
        path = self.table + tuple(_split_dotted(m.group(1)))
        src.key_positions[path] = (lineno, len(line) - len(line.lstrip()) + 1)
        src.positions[path] = (lineno, m.end() + 1)
        rest = line[m.end() :]
        for quote in ('"""', "'''"):
            if rest.startswith(quote) and rest.count(quote) == 1:
                self.multiline = quote
        if rest[:1] in "[{":
            self.stack.append(_Open(path, rest[0]))
            self.inline(line, m.end() + 1, lineno)

    def inline(self, line: str, i: int, lineno: int) -> None:
        src, n = self.src, len(line)
        while i < n and self.stack:
            ch, top = line[i], self.stack[-1]
            if ch.isspace():
                i += 1
                continue
            if ch == "#":
                return
            if top.kind == "[" and top.expecting and ch not in "],":
                elem = top.path + (top.index,)
                src.positions.setdefault(elem, (lineno, i + 1))
                top.expecting = False
                if ch in "[{":
                    self.stack.append(_Open(elem, ch))
                    i += 1
                    continue
            if top.kind == "{":
                m = _INLINE_KEY.match(line, i)
                if m:
                    path = top.path + (m.group(1).strip('"'),)
                    src.key_positions[path] = (lineno, i + 1)
                    src.positions[path] = (lineno, m.end() + 1)
                    i = m.end()
                    if i < n and line[i] in "[{":
                        self.stack.append(_Open(path, line[i]))
                        i += 1
                    continue
            if ch in "\"'":
                j = line.find(ch, i + 1)
                while j > 0 and ch == '"' and line[j - 1] == "\\":
                    j = line.find(ch, j + 1)
                i = j + 1 if j > 0 else n
                continue
            if ch == ",":
                if top.kind == "[":
                    top.index += 1
                    top.expecting = True
            elif ch in "]}":
                self.stack.pop()
            i += 1
