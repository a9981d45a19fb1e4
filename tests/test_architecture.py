"""The package's layers hold (docs/design.md, "Layers"): checked twice, independently.

1. `lint-imports` runs the contracts in pyproject.toml (`[tool.importlinter]`), when installed.
2. This file reads every module with `ast` - imports at the top, inside functions and under
   `TYPE_CHECKING` alike, and `importlib.import_module("laplace_cli...")` by name - and asserts: no import cycle between modules, no `_private` name
   imported from another module, each package imports only packages in layers below it, and no
   module imports the package root. A test inserts a forbidden import into a copy of the package
   and checks that these checks then fail.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "laplace_cli"

# Top to bottom; a package imports only packages in layers below its own. Packages in one
# layer are independent of each other. Keep in step with pyproject.toml and docs/design.md.
LAYERS: list[set[str]] = [
    {"cli"},
    {"pipeline"},
    # laplace-torch's module paths (thin re-exports, its utils and curvature packages):
    # docs/migrating.md
    {"baselaplace", "lllaplace", "subnetlaplace", "marglik_training", "utils", "curvature"},
    {"masks"},
    {"laplace"},
    {"tuning"},
    {"posterior"},
    {"metrics", "fisher", "subsets", "io"},
    {"core"},
]
# the package root and `python -m laplace_cli` sit above every layer; nothing imports them
TOP = {PACKAGE, f"{PACKAGE}.__main__"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a module of the package
    name: str | None  # the name taken from it (`from target import name`), None for `import`
    line: int


def modules(package_dir: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def edges(mods: dict[str, Path]) -> Iterator[Edge]:
    """Every import of a package module, wherever it is written (functions, TYPE_CHECKING)."""
    for source, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        yield Edge(source, alias.name, None, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative import
                    base = source if _is_package(source, mods) else source.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    module = f"{base}.{module}" if module else base
                if module.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    if sub in mods:  # `from laplace_cli.pipeline import distributed`
                        yield Edge(source, sub, None, node.lineno)
                    else:
                        yield Edge(source, module, alias.name, node.lineno)
            elif (
                isinstance(node, ast.Call)
                and _called_name(node.func) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and node.args[0].value.split(".")[0] == PACKAGE
            ):
                # `importlib.import_module("laplace_cli.x")`: an import by name is an import
                yield Edge(source, node.args[0].value, None, node.lineno)


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and module not in TOP else None


def layer_index(package: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    return None


def cycles(mods: dict[str, Path], all_edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in all_edges:
        if e.target in graph:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def violations(package_dir: Path) -> list[str]:
    """Everything wrong with the import graph of the package in `package_dir`, one line each."""
    mods = modules(package_dir)
    all_edges = list(edges(mods))
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(mods, all_edges)]
    for e in all_edges:
        where = f"{e.source}:{e.line}"
        if e.target not in mods:
            problems.append(f"{where} imports {e.target}, which does not exist")
            continue
        if e.target in TOP:
            problems.append(f"{where} imports the package root {e.target}")
        if e.name and e.name.startswith("_") and not e.name.startswith("__"):
            problems.append(f"{where} imports private {e.target}.{e.name}")
        src, dst = package_of(e.source), package_of(e.target)
        if src is None or dst is None or src == dst:
            continue
        i, j = layer_index(src), layer_index(dst)
        if i is None or j is None:
            problems.append(f"{where}: package {src if i is None else dst} is in no layer")
        elif i >= j:
            how = "a higher layer" if i > j else "an independent package in its layer"
            problems.append(f"{where}: {src} imports {e.target} ({how})")
    return problems


def test_import_graph_has_no_cycles_private_imports_or_upward_imports() -> None:
    problems = violations(ROOT / PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_package_is_in_a_layer() -> None:
    packages = {p.parent.name for p in (ROOT / PACKAGE).glob("*/__init__.py")}
    modules = {p.stem for p in (ROOT / PACKAGE).glob("*.py")} - {"__init__", "__main__"}
    assert packages | modules == set().union(*LAYERS)


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("core/errors.py", "from laplace_cli.cli import app", "core imports laplace_cli.cli.app"),
        (
            "posterior/base.py",
            "from laplace_cli.laplace.approximation import Laplace",
            "import cycle",
        ),
        ("subsets/base.py", "from laplace_cli.io import posterior_file", "an independent package"),
        ("io/atomic.py", "import laplace_cli", "imports the package root"),
        (
            "subsets/base.py",
            'import importlib; importlib.import_module("laplace_cli.laplace")',
            "subsets imports laplace_cli.laplace (a higher layer)",
        ),
        (
            "pipeline/gates.py",
            "from laplace_cli.pipeline.stages import _len_or_none",
            "imports private",
        ),
    ],
)
def test_the_check_fails_on_a_forbidden_import(
    tmp_path: Path, module: str, line: str, expected: str
) -> None:
    copy = tmp_path / PACKAGE
    shutil.copytree(ROOT / PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    # inside a function, as a dodged cycle would be: still counted
    target.write_text(target.read_text() + f"\n\ndef _sneaky():\n    {line}\n")
    problems = violations(copy)
    assert any(expected in p for p in problems), problems


def _lint_imports() -> list[str] | None:
    exe = shutil.which("lint-imports")
    if exe:
        return [exe]
    if importlib.util.find_spec("importlinter") is not None:
        return [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
        ]
    return None


def test_lint_imports_contracts_hold() -> None:
    cmd = _lint_imports()
    if cmd is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        [*cmd, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
