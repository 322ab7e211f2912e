"""Every public module, function, class, method and property of backdoor_lens has a docstring of its
own: the API reference is built from them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import backdoor_lens


def package_modules() -> list[ModuleType]:
    """backdoor_lens and every module under it, imported."""
    names = sorted(m.name for m in pkgutil.walk_packages(backdoor_lens.__path__, "backdoor_lens."))
    return [backdoor_lens] + [importlib.import_module(name) for name in names]


def documented(obj: object) -> bool:
    """True when `obj` has a docstring of its own (not a dataclass's generated signature)."""
    doc = obj.__doc__
    if isinstance(obj, type) and doc and doc.startswith(f"{obj.__name__}("):
        return False
    return bool(doc and doc.strip())


def public_members(cls: type) -> dict[str, object]:
    """Methods and properties defined in `cls` itself, without a leading underscore."""
    out = {}
    for name, member in vars(cls).items():
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
            out[name] = member
    return out


def undocumented(module: ModuleType) -> list[str]:
    """Qualified names of the public objects defined in `module` that lack a docstring."""
    missing = [] if documented(module) else [module.__name__]
    for name, obj in vars(module).items():
        defined_here = (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__
        if name.startswith("_") or not defined_here:
            continue
        if not documented(obj):
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(obj):
            missing += [f"{module.__name__}.{name}.{m}" for m, member in public_members(obj).items() if not documented(member)]
    return missing


def test_every_public_name_has_a_docstring():
    missing = [name for module in package_modules() for name in undocumented(module)]
    assert not missing, f"{len(missing)} public names lack a docstring: {missing}"
