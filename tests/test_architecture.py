"""Dependency direction of DESIGN.md section 3: lower layers never import higher ones."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "jrinfer"

# module -> jrinfer modules it must never import (directly, at any place in the file)
FORBIDDEN = {
    "_checks": {"model", "observation", "problem", "posterior", "backends", "data", "prior", "plotting", "cli"},
    "_rng": {"model", "observation", "problem", "posterior", "backends", "data", "prior", "plotting", "cli"},
    "_integrate": {"model", "observation", "problem", "posterior", "backends", "data", "prior", "plotting", "cli"},
    "model": {"observation", "problem", "posterior", "backends", "data", "prior", "plotting", "cli", "datasets"},
    "spectral": {"observation", "problem", "posterior", "backends", "data", "prior", "plotting", "cli"},
    # prior may read the model's parameter table (defaults and units of the JR constants)
    "prior": {"observation", "problem", "posterior", "backends", "data", "plotting", "cli"},
    "data": {"model", "observation", "problem", "posterior", "backends", "prior", "plotting", "cli"},
    "observation": {"problem", "posterior", "backends", "plotting", "cli"},
    "problem": {"posterior", "backends", "plotting", "cli"},
    "posterior": {"problem", "observation", "model", "backends", "plotting", "cli"},
}


def jrinfer_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jrinfer"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("jrinfer."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(module):
    bad = jrinfer_imports(PKG / f"{module}.py") & FORBIDDEN[module]
    assert not bad, f"jrinfer/{module}.py imports {sorted(bad)}"


def test_backends_do_not_import_each_other_or_plotting():
    # private modules (_assembly, _vl_engine) are shared infrastructure that any
    # backend may use; public backend modules never import each other
    backends = [p for p in (PKG / "backends").glob("*.py") if p.name != "__init__.py"]
    names = {p.stem for p in backends if not p.stem.startswith("_")}
    for path in backends:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jrinfer.backends."):
                other = node.module.split(".")[2]
                assert other == path.stem or other not in names, f"{path.name} imports backend {other}"
        assert "plotting" not in jrinfer_imports(path), path.name
