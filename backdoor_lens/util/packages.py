"""Files that ship inside installed packages (lexicons, corpora, model weights), found without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str, install: str | None = None) -> Path:
    """The folder of an installed package; the error says how to install it (`install`, or pip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        how = install or f"pip install {package}"
        raise ModuleNotFoundError(f"package {package!r} is not installed; install it with: {how}")
    return Path(spec.origin).parent


def package_file(package: str, name: str, install: str | None = None) -> Path:
    """A file or folder shipped inside an installed package."""
    return package_dir(package, install) / name
