"""The packages form layers: a lower layer never imports a higher one.

``world_model`` (the model) < ``sana_wm_env`` (environments) < ``policies`` < the applications (``sana_wm_cli``,
the ``sana-wm`` command, and ``sana_wm_ros``, the ROS 2 node). Read statically from the source (every ``import``,
also those inside functions, and ``importlib.import_module`` of a literal name), so an import that only runs on
some code path is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "world_model": ROOT / "world_model",
    "sana_wm_env": ROOT / "sana_wm_env",
    "policies": ROOT / "policies",
    "sana_wm_cli": ROOT / "sana_wm_cli",
    "sana_wm_ros": ROOT / "ros" / "sana_wm_ros",
}
# package -> the first-party packages it must not import
FORBIDDEN = {
    "world_model": {"sana_wm_env", "policies", "sana_wm_cli", "sana_wm_ros"},
    "sana_wm_env": {"policies", "sana_wm_cli", "sana_wm_ros"},
    "policies": {"sana_wm_cli", "sana_wm_ros"},
    "sana_wm_ros": {"sana_wm_cli"},
}


def imported_packages(source: str) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every absolute import in ``source`` (relative imports stay in a package)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and not node.args[0].value.startswith(".")):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_imported_packages_reads_every_kind_of_import():
    source = ("import a.b\nfrom c.d import e\nfrom . import f\ndef g():\n    import h\n"
              "importlib.import_module('i.j')\nimport_module('.k', __package__)\n")
    assert sorted(imported_packages(source)) == [(1, "a"), (2, "c"), (5, "h"), (6, "i")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(package):
    files = sorted(PACKAGES[package].rglob("*.py"))
    assert files, f"no sources found for {package} under {PACKAGES[package]}"
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for line, name in imported_packages(path.read_text(encoding="utf-8"))
        if name in FORBIDDEN[package]
    ]
    assert not violations, f"{package} imports a higher layer:\n" + "\n".join(violations)


def module_graph(package: str) -> dict[str, set[str]]:
    """``module -> modules of the same package it imports`` (absolute and relative imports, wherever they are)."""
    root = PACKAGES[package]
    files: dict[str, tuple[Path, bool]] = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in files.items():
        here = module.split(".") if is_package else module.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                # a module's own parent packages run first anyway: importing them is no cycle
                if name and name != module and not module.startswith(name + "."):
                    targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_loop_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles_between_modules(package):
    """Two modules that import each other (even lazily, inside a function) are one module in two files."""
    found = cycles(module_graph(package))
    assert not found, f"import cycles in {package}: " + "; ".join(" <-> ".join(c) for c in found)


def import_time_packages(source: str, full: bool = False) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of the absolute imports that run when a module is imported: those outside
    function bodies (module level, class bodies, ``if``/``try`` blocks). ``full``: the full module names instead,
    and for ``from a import b`` also ``a.b`` (b may be a module)."""
    found = []

    def name(module: str) -> str:
        return module if full else module.split(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, name(alias.name)) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, name(node.module)))
            if full:
                found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def test_import_time_packages_skips_function_bodies():
    source = ("import a\nclass B:\n    import c\ndef d():\n    import e\n"
              "try:\n    from f import g\nexcept ImportError:\n    pass\n")
    assert import_time_packages(source) == [(1, "a"), (3, "c"), (7, "f")]
    assert import_time_packages("from p import q\nimport r.s\n", full=True) == [(1, "p"), (1, "p.q"), (2, "r.s")]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_ray_loads_only_when_a_ray_run_starts(package):
    """Ray is the optional ``ray`` extra: no module imports it at import time, only inside the functions of a
    ``--ray`` run (through ``sana_wm_env.distributed.require_ray``, which names the extra when it is missing).
    ``policies/rllib.py`` is the exception: RLlib's own integration module, imported only by RLlib users (as
    ``policies/sb3.py`` imports Stable-Baselines3), and no other module imports it."""
    violations = [f"{path.relative_to(ROOT)}:{line}"
                  for path in sorted(PACKAGES[package].rglob("*.py")) if path != ROOT / "policies" / "rllib.py"
                  for line, name in import_time_packages(path.read_text(encoding="utf-8")) if name == "ray"]
    assert not violations, "ray imported at import time:\n" + "\n".join(violations)
    importers = [f"{path.relative_to(ROOT)}:{line}" for path in sorted(PACKAGES[package].rglob("*.py"))
                 for line, name in import_time_packages(path.read_text(encoding="utf-8"), full=True)
                 if name == "policies.rllib"]
    assert not importers, "policies.rllib imported at import time:\n" + "\n".join(importers)
