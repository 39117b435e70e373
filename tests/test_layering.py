"""The layering of docs/architecture.md: import-linter's contracts (pyproject.toml), and what it
cannot check, read from the source with ``ast``: no import cycle between modules (imports inside
functions and ``TYPE_CHECKING`` blocks included), no private name taken from another module."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "kernelfi"


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    p = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_store_and_analysis_do_not_load_torch() -> None:
    code = "import sys, kernelfi.store, kernelfi.analysis; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> list[tuple[str, str, str, int]]:
    """(importer, imported module, imported name or "", line) of every import of a kernelfi
    module anywhere in a file; ``from p import m`` of a submodule imports the submodule."""
    found = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(name, a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "kernelfi"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "kernelfi":
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.append((name, sub, "", node.lineno) if sub in mods else (name, base, a.name, node.lineno))
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_by_hand() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules() -> None:
    mods = modules()
    edges: dict[str, set[str]] = {}
    for importer, module, _, _ in imports(mods):
        if module in mods and module != importer:
            edges.setdefault(importer, set()).add(module)
    assert cycles(edges) == []


def test_no_private_name_from_another_module() -> None:
    """A helper two files need is public where it lives: no ``from m import _x``, no
    ``m._x`` on an imported module, and a private module (``_base``) only inside its package."""
    mods = modules()
    bad = []
    for importer, module, name, line in imports(mods):
        where = f"{mods[importer].relative_to(ROOT)}:{line}"
        if name.startswith("_") and not name.startswith("__"):
            bad.append(f"{where}: {name} from {module}")
        parts = module.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__") and not (importer + ".").startswith(".".join(parts[:i]) + "."):
                bad.append(f"{where}: private module {module}")
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        bound = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names if isinstance(n, ast.Import) and a.name.startswith("kernelfi")}
        bound |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                  and n.module.startswith("kernelfi") for a in n.names if f"{n.module}.{a.name}" in mods}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
                    and n.attr.startswith("_") and not n.attr.startswith("__")):
                bad.append(f"{path.relative_to(ROOT)}:{n.lineno}: {n.value.id}.{n.attr}")
    assert bad == []
