"""The layers point one way (README, Architecture): read every module's imports (module level
and inside functions) from the source and check the rules.

- ir/ imports nothing from cnncc/ or backends/ (it is the mechanism everything else uses);
- backends/ import nothing from cnncc.lower, cnncc.passes or cnncc.frontend (the driver hands
  them a lowered program), and the passes and the lowering import no backend;
- llvmlite is imported only under backends/llvm/;
- no module imports a ``_private`` name from another module;
- no two modules import each other, directly or through others, lazily or not (a package's
  own submodules excepted: importing a submodule always imports its package first);
- imports across packages are absolute (no ``from ..x``);
- ruff's checks (pyproject.toml [tool.ruff]) find nothing.
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> package name (setuptools' package-dir mapping: ir/ is cnncc.ir, ...).
PACKAGES = {"cnncc": "cnncc", "ir": "cnncc.ir", "backends": "cnncc.backends"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return out


MODULES = _modules()


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import statements under ``if TYPE_CHECKING:`` (never executed)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            out |= {id(x) for x in ast.walk(node) if isinstance(x, (ast.Import, ast.ImportFrom))}
    return out


def _imports(name: str, tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import the module executes, at
    module level or inside functions (lazy imports count: they run too)."""
    path = MODULES[name][0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = _type_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, [a.name for a in node.names], node.lineno))
    return found


def _resolved(mod: str, names: list[str]) -> list[str]:
    """The modules an import statement reaches (``from pkg import sub`` reaches pkg.sub)."""
    out = [mod]
    out += [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
    return out


def _violations(rule) -> list[str]:
    bad = []
    for name, (path, tree) in MODULES.items():
        for mod, names, line in _imports(name, tree):
            for target in _resolved(mod, names):
                why = rule(name, target)
                if why:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}: {why}")
    return sorted(set(bad))


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def test_the_source_tree_is_read():
    assert {"cnncc.driver", "cnncc.ir.graph", "cnncc.backends.llvm.codegen",
            "cnncc.lower.program", "cnncc.passes"} <= set(MODULES)


def test_ir_imports_no_policy_and_no_backend():
    def rule(src, dst):
        if _under(src, "cnncc.ir") and _under(dst, "cnncc") and not _under(dst, "cnncc.ir"):
            return "ir/ must not depend on cnncc/ or backends/"
    assert _violations(rule) == []


def test_backends_receive_programs_and_never_call_up():
    up = ("cnncc.lower", "cnncc.passes", "cnncc.frontend", "cnncc.driver", "cnncc.dsl")

    def rule(src, dst):
        if _under(src, "cnncc.backends") and any(_under(dst, u) for u in up):
            return "a backend must not call back up into the pipeline"
        if any(_under(src, p) for p in ("cnncc.passes", "cnncc.lower", "cnncc.frontend")) \
                and _under(dst, "cnncc.backends"):
            return "passes, lowering and frontend must not use a backend"
    assert _violations(rule) == []


def test_llvmlite_only_in_the_llvm_backend():
    def rule(src, dst):
        if _under(dst, "llvmlite") and not _under(src, "cnncc.backends.llvm"):
            return "llvmlite belongs to backends/llvm/"
        if _under(dst, "llvmlite.binding") and src != "cnncc.backends.llvm.jit":
            return "jit.py is the only user of llvmlite.binding"
    assert _violations(rule) == []


def test_imports_across_packages_are_absolute():
    """``from ..x`` leaves its package: under the package-dir mapping (ir/ is cnncc.ir) such a
    path names a folder the source tree does not have; cross-package imports are absolute."""
    bad = []
    for name, (path, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []


def test_no_private_name_imported_from_another_module():
    bad = []
    for name, (path, tree) in MODULES.items():
        for mod, names, line in _imports(name, tree):
            if _under(mod, "cnncc") or mod in MODULES:
                for n in names:
                    if n.startswith("_") and not n.startswith("__"):
                        bad.append(f"{path.relative_to(ROOT)}:{line} imports {n} from {mod}")
    assert bad == []


def _import_graph() -> nx.DiGraph:
    """Module -> module it imports (the nearest source module of each import)."""
    g = nx.DiGraph()
    for name, (path, tree) in MODULES.items():
        g.add_node(name)
        for mod, names, line in _imports(name, tree):
            for target in _resolved(mod, names):
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if not target or target == name or _under(name, target):
                    continue            # itself, or a package it lives in
                if target == mod and names and all(f"{mod}.{n}" in MODULES for n in names):
                    continue            # `from pkg import sub`: the edge goes to pkg.sub
                g.add_edge(name, target, where=f"{path.relative_to(ROOT)}:{line}")
    return g


def test_no_import_cycle():
    g = _import_graph()
    cycles = []
    for group in nx.strongly_connected_components(g):
        if len(group) > 1:
            edges = [f"{d['where']} -> {v}" for u, v, d in g.subgraph(group).edges(data=True)]
            cycles.append(sorted(edges))
    assert cycles == []


@pytest.mark.parametrize("rule", ["ir", "backends"])
def test_the_checks_catch_a_violation(rule):
    """The rules are not vacuous: a planted bad import is reported."""
    fake = {"ir": ("cnncc.ir.planted", "from cnncc.lower.program import lower_graph\n"),
            "backends": ("cnncc.backends.planted", "from cnncc.passes import run_pipeline\n")}
    name, code = fake[rule]
    MODULES[name] = (ROOT / name.replace("cnncc.", "").replace(".", "/"), ast.parse(code))
    try:
        with pytest.raises(AssertionError):
            (test_ir_imports_no_policy_and_no_backend if rule == "ir"
             else test_backends_receive_programs_and_never_call_up)()
    finally:
        del MODULES[name]


def test_ruff_finds_nothing():
    """The lint rules of pyproject.toml's [tool.ruff] hold on the whole source tree."""
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: `pip install -e .[dev]` installs it")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "cnncc", "ir", "backends",
                          "tests", "examples"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_the_cycle_check_catches_a_lazy_cycle():
    planted = {"cnncc.planted_a": "import cnncc.planted_b\n",
               "cnncc.planted_b": "def f():\n    from cnncc import planted_a\n"}
    for name, code in planted.items():
        MODULES[name] = (ROOT / "cnncc" / (name.split(".")[1] + ".py"), ast.parse(code))
    try:
        with pytest.raises(AssertionError):
            test_no_import_cycle()
    finally:
        for name in planted:
            del MODULES[name]
