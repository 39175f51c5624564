"""Dependency direction of DESIGN.md section 3: lower layers never import higher ones."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "jrinfer"

# module -> jrinfer modules it must never import (directly, at any place in the file).
# DESIGN.md section 3: the model knows nothing of observations, priors or data; data and
# priors are plain inputs (neither imports the model); an observation wraps the model and
# explains data but does not build priors (its default prior is a spec in Prior's JSON
# schema); the problem joins them; backends see only the problem; the posterior is plain
# arrays and names.
_HIGH = {"problem", "posterior", "backends", "plotting", "cli", "comparison", "identifiability", "distributed"}
FORBIDDEN = {
    "_checks": {"model", "observation", "data", "prior", "datasets"} | _HIGH,
    "_rng": {"model", "observation", "data", "prior", "datasets"} | _HIGH,
    "_io": {"model", "observation", "data", "prior", "datasets"} | _HIGH,
    "_linalg": {"model", "observation", "data", "prior", "datasets"} | _HIGH,
    "_optional": {"model", "observation", "data", "prior", "datasets"} | _HIGH,
    "_integrate": {"model", "observation", "data", "prior", "datasets"} | _HIGH,
    "model": {"observation", "data", "prior", "datasets"} | _HIGH,
    "spectral": {"observation", "data", "prior", "datasets"} | _HIGH,
    "prior": {"model", "observation", "data", "datasets"} | _HIGH,
    "data": {"model", "observation", "prior"} | _HIGH,
    "observation": {"prior", "datasets"} | _HIGH,
    "problem": _HIGH - {"problem"},
    "posterior": {"problem", "observation", "model", "prior", "data", "datasets"} | (_HIGH - {"posterior"}),
    "comparison": {"backends", "plotting", "cli", "observation", "model"},
    "conditions": {"backends", "plotting", "cli", "identifiability", "distributed", "problem", "posterior", "prior"},
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


def test_backends_see_only_the_problem():
    """DESIGN.md section 3: a backend consumes an InverseProblem (and mirrors the Prior's distributions); the
    model, the observations and the data containers reach it only through the problem's interface."""
    for path in (PKG / "backends").glob("*.py"):
        bad = jrinfer_imports(path) & {"model", "observation", "data", "datasets", "conditions"}
        assert not bad, f"jrinfer/backends/{path.name} imports {sorted(bad)}"
