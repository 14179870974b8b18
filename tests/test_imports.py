"""Importing patternc, compiling, checking and exporting to files never import torch: the language
needs numpy only, and torch takes about a second to import (``import patternc`` is the first line
of every script and of the CLI)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "networkx", "matplotlib", "optuna", "hydra")

SCRIPT = """
import sys
import patternc
from patternc.cli import main
cp = patternc.compile("conf/pattern/longformer.yaml", n=4096)
patternc.reach(cp)
cp.stats()
cp.to_dense_blocks()
assert main(["compile", "causal & window(64)", "--n", "1024"]) == 0
assert main(["check", "conf/pattern/bigbird.yaml", "--n", "2048"]) == 0
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_compiling_and_checking_import_no_torch():
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY)], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[-1] == ""


def test_networkx_loads_with_the_first_graph_only():
    """networkx is for ``CompiledPattern.graph``: compiling and ``reach`` never load it (above)."""
    script = ("import sys, patternc\n"
              "cp = patternc.compile('causal & window(4)', n=64)\n"
              "before = 'networkx' in sys.modules\n"
              "cp.graph()\n"
              "print(before, 'networkx' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("name", ["kernels", "cost", "measure", "Measurement", "layout_hash",
                                  "resolve_device"])
def test_torch_facing_names_load_on_first_use(name):
    import patternc

    assert getattr(patternc, name) is not None
    assert name in dir(patternc)


def test_an_unknown_name_is_an_attribute_error():
    import patternc

    with pytest.raises(AttributeError, match="no attribute 'kernel'"):
        patternc.kernel  # noqa: B018


def test_search_uses_only_patternc_public_api():
    """search/ is a client of patternc: it imports names patternc exports (its ``__all__``, or that of
    a public subpackage), never a module's internals, so patternc can reshape its inside freely."""
    import ast
    import importlib
    from pathlib import Path

    import patternc

    public = ("nn", "kernels", "explore", "export", "cost", "hf")
    public_modules = {"patternc", *(f"patternc.{m}" for m in public)}
    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "search").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("patternc"):
                if node.module not in public_modules:
                    found.append(f"{path.name}: from {node.module} import ...")
                    continue
                exported = patternc.__all__ if node.module == "patternc" else \
                    importlib.import_module(node.module).__all__
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                          if a.name not in exported]
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.startswith("patternc.") and a.name not in public_modules]
    assert found == []


def _module_imports(root, packages: tuple[str, ...], lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports when it is loaded: its module-level imports (a
    function's import is lazy on purpose, and ``if TYPE_CHECKING:`` never runs), resolved to a
    submodule where the imported name is one. ``lazy``: a function's imports too."""
    import ast

    paths = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for statement in ast.parse(path.read_text()).body:
            if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
                continue
            if not lazy and not isinstance(statement, (ast.Import, ast.ImportFrom, ast.If, ast.Try)):
                continue  # a function's or a class's imports run when it is called
            for node in ast.walk(statement):
                if isinstance(node, ast.Import):
                    found |= {alias.name for alias in node.names if alias.name in paths}
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                        + ([node.module] if node.module else []))
                    for alias in node.names:
                        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = (found & set(paths)) - {name}
    return graph


def test_no_import_circle_in_patternc_or_search():
    from pathlib import Path

    graph = _module_imports(Path(__file__).resolve().parents[1], ("patternc", "search"))
    assert "patternc.kernels.paths" in graph and "patternc.machine" in graph["patternc.kernels.paths"]
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                circles.append([*path[path.index(imported):], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


@pytest.mark.parametrize("package", ["patternc", "patternc.kernels", "patternc.hf", "patternc.export",
                                     "patternc.native"])
def test_no_exported_name_shadows_a_module_of_its_package(package):
    """``import patternc.kernels.x as m`` must give the module x: a function of the same name would
    take its place on the package (``patternc.reach`` is the function; its package is
    ``patternc.reachability``). A package may export a submodule itself (``patternc.nn``)."""
    import importlib
    import pkgutil
    import types

    if package == "patternc.hf":
        pytest.importorskip("transformers")
    module = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    shadowed = [name for name in sorted(submodules & set(module.__all__))
                if not isinstance(getattr(module, name), types.ModuleType)]
    assert shadowed == []


def test_the_renamed_hf_state_warns_and_is_the_new_class():
    pytest.importorskip("transformers")
    import patternc.hf

    with pytest.warns(DeprecationWarning, match="SparsifiedAttention"):
        old = patternc.hf.SparseAttention
    assert old is patternc.hf.SparsifiedAttention
    with pytest.raises(AttributeError, match="no attribute 'SparseAttn'"):
        patternc.hf.SparseAttn  # noqa: B018


# A method of the compiled pattern that hands it to the subsystem that analyses it: the one import
# that runs against the layering, on purpose (``cp.graph()`` is ``patternc.reachability``'s).
FACADE_IMPORTS = {("patternc.compiled", "patternc.reachability.graph")}


def test_no_function_imports_its_callers_module():
    """A function's import does not close a circle either, in patternc/ or search/ (one that does is
    a circle put off until the call, which hides which module depends on which: search.calibrate and
    search.validate, search.report and search.report_html were such), except the compiled pattern's
    facade."""
    from pathlib import Path

    graph = _module_imports(Path(__file__).resolve().parents[1], ("patternc", "search"), lazy=True)
    for module, imported in FACADE_IMPORTS:
        graph[module].discard(imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def strong(module: str) -> None:  # Tarjan: the circles are the components of more than one module
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph[module]:
            if imported not in index:
                strong(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            strong(module)
    assert circles == []
