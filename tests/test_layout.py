"""The package's import graph points one way: each layer imports only itself and the layers below
it, the library never imports ``experiments``, and no experiment imports another experiment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import backdoor_lens

PACKAGE = Path(backdoor_lens.__file__).parent
LAYERS = ("util", "models", "hooks", "lm", "data", "eval", "analysis", "lab", "defense", "experiments")
"""Bottom first: a module may import from its own layer and the ones before it."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, source: str | None = None) -> list[str]:
    """Absolute names of the backdoor_lens modules (or names in them) that `path` imports, relative
    imports resolved; `source` stands in for the file's text."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out += [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
    return [name for name in out if name == "backdoor_lens" or name.startswith("backdoor_lens.")]


def _violations(path: Path, source: str | None = None) -> list[str]:
    here = _module_name(path)
    layer = LAYERS.index(_layer(here))
    found = []
    for target in _imports(path, source):
        there = _layer(target)
        if there is None:
            continue
        if LAYERS.index(there) > layer:
            found.append(f"{here} ({LAYERS[layer]}) imports {target} ({there}), a layer above it")
        mine, theirs = _experiment(here), _experiment(target)
        if theirs is not None and theirs != mine:
            found.append(f"experiment {mine or 'common'} imports experiment {theirs} ({target})")
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _experiment(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "experiments" and parts[2] != "common" else None


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py")


def test_every_module_belongs_to_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"top-level modules outside the layers: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == set(LAYERS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    assert _violations(path) == []


def test_the_checker_sees_violations():
    """Relative imports are resolved, so an upward import and a cross-experiment import are caught."""
    rows, smollm = PACKAGE / "lm" / "rows.py", PACKAGE / "experiments" / "smollm" / "study.py"
    assert _violations(rows, "from ..analysis.baha import baha_scores\n")
    assert _violations(rows, "from backdoor_lens.experiments.toy import study\n")
    assert _violations(smollm, "from ..collapse.study import run\n")
    assert _violations(smollm, "from ..common.stages import Stages\nfrom ...lab import ChatModel\n") == []


def test_top_level_namespace_has_one_object_per_name():
    """Every name of ``import backdoor_lens as bl`` is exported by exactly one subpackage (its home)."""
    import importlib

    homes: dict[str, list[str]] = {}
    for layer in LAYERS[:-1]:
        sub = importlib.import_module(f"backdoor_lens.{layer}")
        for name in sub.__all__:
            homes.setdefault(name, []).append(layer)
            assert getattr(sub, name) is not None
    shared = {n: h for n, h in homes.items() if len(h) > 1}
    assert shared == {}, f"names exported by several subpackages: {shared}"
    for name in backdoor_lens.__all__:
        assert name in homes, f"bl.{name} has no subpackage home"
        home = importlib.import_module(f"backdoor_lens.{homes[name][0]}")
        assert getattr(backdoor_lens, name) is getattr(home, name)


def test_no_export_shadows_a_submodule():
    """``backdoor_lens.lm.train`` must be the module, not a function exported under that name: a
    package never exports a name that is also one of its submodules (the API docs rely on it)."""
    import importlib
    import pkgutil

    for layer in LAYERS:
        package = importlib.import_module(f"backdoor_lens.{layer}")
        submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        clashes = submodules & set(getattr(package, "__all__", ()))
        assert clashes == set(), f"backdoor_lens.{layer} exports {clashes}, which are also its submodules"
