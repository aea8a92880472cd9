"""The package's import graph has no cycles, and the SAT-layout module is a leaf.

Every module of the package (the folders with an __init__.py, from the repository root, which is the package
`cogvlm`) is parsed with `ast`, without importing anything: module-level and function-level imports of
`cogvlm.*` and relative imports are edges. An import of a package's name from a package (`from cogvlm.utils
import checkpoint_io`) is an edge to that subpackage; of any other name, an edge to the module it is taken from.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "cogvlm"
ROOT = Path(__file__).resolve().parent.parent
LEAF = f"{PACKAGE}.utils.checkpoint_io.sat_layout"


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module in the package's folders (tests are not part of it)."""
    modules = {}
    folders = [root]
    while folders:
        folder = folders.pop()
        package = ".".join((PACKAGE, *folder.relative_to(root).parts))
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file() and path.name != "tests":
                folders.append(path)
            elif path.suffix == ".py":
                modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module `name` is, or the nearest one containing it (a name imported from a module)."""
    while name.startswith(PACKAGE):
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:              # relative: from the module's package, one level up per extra dot
                base = module.split(".")[:len(module.split(".")) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [f"{source}.{alias.name}" for alias in node.names] + [source]
        else:
            continue
        edges |= {target for name in names if (target := _resolve(name, modules)) not in (None, module)}
    return edges


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, str] = {}          # "open" while on the current path, "done" when fully explored
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = "open"
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = "open"
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_package_has_no_import_cycle():
    modules = package_modules()
    assert LEAF in modules and f"{PACKAGE}.utils.checkpoint_io.loading" in modules     # the walk found the package
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_sat_layout_module_imports_no_project_module():
    modules = package_modules()
    assert imports_of(LEAF, modules[LEAF], modules) == set()


def test_every_checkpoint_module_reads_and_writes_through_the_sat_layout():
    modules = package_modules()
    graph = import_graph(modules)
    for name in ("loading", "merging", "hf_conversion"):
        module = f"{PACKAGE}.utils.checkpoint_io.{name}"
        reached, frontier = set(), [module]
        while frontier:
            for target in graph[frontier.pop()] - reached:
                reached.add(target)
                frontier.append(target)
        assert LEAF in reached, module


def test_the_checker_finds_cycles_and_edges_of_every_kind(tmp_path):
    """The graph is built from module-level, function-level and relative imports; a cycle is named."""
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("from . import a\n")
    (tmp_path / "sub" / "a.py").write_text("def f():\n    from cogvlm.sub.b import g\n")
    (tmp_path / "sub" / "b.py").write_text("from ..c import h\n")
    (tmp_path / "c.py").write_text("import cogvlm.sub.a as a\nh = 1\n")
    modules = package_modules(tmp_path)
    graph = import_graph(modules)
    assert graph == {"cogvlm": set(), "cogvlm.c": {"cogvlm.sub.a"}, "cogvlm.sub": {"cogvlm.sub.a"},
                     "cogvlm.sub.a": {"cogvlm.sub.b"}, "cogvlm.sub.b": {"cogvlm.c"}}
    assert find_cycle(graph) == ["cogvlm.c", "cogvlm.sub.a", "cogvlm.sub.b", "cogvlm.c"]
    (tmp_path / "c.py").write_text("h = 1\n")
    assert find_cycle(import_graph(package_modules(tmp_path))) is None
