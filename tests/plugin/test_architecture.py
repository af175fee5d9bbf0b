"""The package's shape, checked so it cannot drift: layers, import direction, no cycles, small modules, and the
README's layout section listing exactly the modules that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pytest_vllmcompat"
MAX_LINES = 300
# Which layers a layer may import (besides itself). Dependencies point one way: nothing imports the plugin but
# the plugin; report and install know nothing of pytest's side.
ALLOWED = {
    "errors": set(),
    "matrix": {"errors"},
    "host": {"errors", "matrix", "process"},
    "install": {"errors", "matrix", "host", "process"},
    "process": {"errors"},
    "backend": {"errors", "process"},
    "testing": {"errors", "process", "backend"},
    "report": {"errors", "matrix", "host", "install"},
    "plugin": {"errors", "matrix", "host", "install", "process", "backend", "testing", "report"},
    "cli": {"errors", "matrix", "host", "install", "report"},
    "bench": {"errors", "process", "backend", "testing"},
    "__main__": {"cli"},
    "__init__": set(),
}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package's __init__ is the package itself)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """Package modules that `name` imports anywhere in its file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_dependencies_point_one_way():
    wrong = [f"{name} imports {dep}" for name, deps in GRAPH.items() for dep in sorted(deps)
             if layer(dep) != layer(name) and layer(dep) not in ALLOWED[layer(name)]]
    assert wrong == []


@pytest.mark.parametrize("layer_name", ["report", "install", "process", "matrix", "host", "errors"])
def test_offline_layers_never_import_pytest(layer_name):
    offenders = [name for name, path in MODULES.items() if layer(name) == layer_name
                 and re.search(r"^\s*(import pytest|from pytest|from _pytest)", path.read_text(), re.M)]
    assert offenders == []


def test_no_module_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def readme_layout_files() -> set[str]:
    """Files named in README.md's "## Layout" code block: one entry per line, nested by two-space indentation
    under `folder/` lines; several names on a line are separated by ", "; a description follows two spaces."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^## Layout\n.*?```\n(.*?)```", text, re.S | re.M)
    assert block, "README.md has no '## Layout' section with a code block"
    listed, folders = set(), []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        level = (len(line) - len(line.lstrip())) // 2
        entry = line.strip().split("  ")[0]
        del folders[level:]
        if entry.endswith("/"):
            folders.append(entry)
            continue
        listed |= {"".join(folders) + name.strip() for name in entry.split(", ")}
    return listed


def test_readme_layout_lists_exactly_the_modules():
    listed = {p for p in readme_layout_files() if p.startswith("pytest_vllmcompat/") and p.endswith(".py")}
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert sorted(actual - listed) == [], "modules missing from README.md's layout section"
    assert sorted(listed - actual) == [], "README.md's layout section lists modules that do not exist"
