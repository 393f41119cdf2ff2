"""The package's shape: layers that do not import each other in a circle nor reach into each
other's private names, files of a readable size, the planner writing nothing, each rule of the
medium stated once, and the README's layout true to the tree."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "moldbatch"
MAX_LINES = 600  # a longer file states why at its top ("long: <reason>")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(module imported, names taken from it) for every import in the file, at any depth
    (an import inside a function is a dependency too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + [node.module or ""]).strip(".") if node.level else node.module
            if not target or not target.startswith("moldbatch"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, ()) if sub in modules else (target, (alias.name,))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("moldbatch."):
                    yield alias.name, ()


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _ in _imports(name, path, modules):
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_a_cycle_would_be_found():
    # guards the checker itself: a graph with a cycle is reported
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    taken = [
        f"{name} takes {target}.{n}"
        for name, path in modules.items()
        for target, names in _imports(name, path, modules)
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != name
    ]
    assert taken == []


def test_the_lower_layers_do_not_import_the_upper_ones():
    # models/errors/fsio < media < spec < plan < weights < runtime < execute < review < views
    # < operations < cli
    order = ["media", "spec", "plan", "weights", "runtime", "execute", "review", "views"]
    order += ["operations", "cli"]
    rank = {layer: i for i, layer in enumerate(order)}
    bad = []
    for name, deps in _graph().items():
        layer = name.split(".")[1] if "." in name else ""
        for dep in deps:
            other = dep.split(".")[1] if "." in dep else ""
            if layer in rank and other in rank and rank[other] > rank[layer]:
                bad.append(f"{name} imports {dep}")
    assert bad == []


def test_long_files_say_why_at_their_top():
    long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > MAX_LINES and "long: " not in "\n".join(text.splitlines()[:15]):
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert long == []


def _literal_groups(node) -> list[set[str]]:
    groups = []
    for n in ast.walk(node):
        if isinstance(n, ast.Tuple | ast.List | ast.Set):
            values = {e.value for e in n.elts if isinstance(e, ast.Constant)}
            if all(isinstance(v, str) for v in values):
                groups.append(values)
    return groups


def test_formats_transitions_pipelines_and_grids_are_stated_once():
    vocabularies = {
        "formats": {"mp4", "gif", "apng", "webp"},
        "transitions": {"smooth", "cut", "fade"},
        "pipelines": {"distilled", "two-stage", "one-stage", "keyframe", "a2vid", "retake"},
    }
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "models.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text())
        for group in _literal_groups(tree):
            for what, words in vocabularies.items():
                if len(group & words) >= 3:
                    found.append(f"{path.relative_to(ROOT)}: {what} {sorted(group)}")
        for n in ast.walk(tree):
            if isinstance(n, ast.Assign):
                names = [t.id for t in n.targets if isinstance(t, ast.Name)]
                if {"FRAME_GRID", "SIZE_GRID"} & set(names):
                    found.append(f"{path.relative_to(ROOT)}: grid {names}")
        if re.search(r"family\s*[!=]=\s*\"tiny\"", path.read_text()):
            found.append(f"{path.relative_to(ROOT)}: a tiny-model branch (use ModelInfo)")
    assert found == []


def _tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def test_validate_and_plan_write_no_file(tmp_path: Path, solid):
    import base64

    film = tmp_path / "film"
    film.mkdir()
    inline = base64.b64encode(solid((200, 30, 30)).read_bytes()).decode()
    (film / "walk.toml").write_text(
        'schema = "mold.chain.v1"\n'
        '[chain]\nmodel = "ltx-2-tiny:random"\nwidth = 64\nheight = 64\nfps = 24\nseed = 1\n'
        "steps = 2\nmotion_tail_frames = 4\n"
        f'[[stage]]\nprompt = "a lake"\nframes = 17\nsource_image_b64 = "{inline}"\n'
        '[[stage]]\nprompt = "the shore"\nframes = 17\ntransition = "cut"\n'
        f'source_image_b64 = "{inline}"\n'
    )
    before = _tree_state(film)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for args in (["validate", "walk.toml"], ["plan", "walk.toml"], ["plan", "--json", "walk.toml"]):
        res = subprocess.run(
            [sys.executable, "-m", "moldbatch", *args],
            cwd=film,
            capture_output=True,
            text=True,
            env=env,
        )
        assert res.returncode == 0, res.stdout + res.stderr
    assert _tree_state(film) == before  # no .moldbatch/, no decoded image, nothing


def test_the_readme_layout_names_every_part_of_the_package():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    parts = sorted(
        p.name if p.is_dir() else p.name
        for p in PACKAGE.iterdir()
        if not p.name.startswith("__") and (p.is_dir() or p.suffix == ".py")
    )
    missing = [p for p in parts if not re.search(rf"\b{re.escape(p)}/?\s", layout)]
    assert missing == []
    named = re.findall(r"^\s{2}([a-z_]+(?:\.py|/))", layout, re.M)
    assert all((PACKAGE / n.rstrip("/")).exists() for n in named), named
