"""Utilities every layer uses: atomic, pickle-free files; argument checks with clear errors;
fingerprints that key saved results; files that ship inside packages.

Names load on first use (PEP 562), and only :mod:`.hashing` imports torch at import time, so
the untrusted-file rules (:mod:`.model_files`) can check a command line's model folder in a
fraction of a second."""

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "hashing": ("fingerprint", "tensor_digest", "weights_digest"),
    "io": ("load_artifact", "load_tensors", "read_json", "save_artifact", "save_tensors", "write_json", "write_text"),
    "packages": ("package_dir", "package_file"),
    "validation": ("check_choice", "check_finite", "check_last_dim", "check_names", "check_nonempty", "check_range"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from .hashing import fingerprint, tensor_digest, weights_digest
    from .io import load_artifact, load_tensors, read_json, save_artifact, save_tensors, write_json, write_text
    from .packages import package_dir, package_file
    from .validation import check_choice, check_finite, check_last_dim, check_names, check_nonempty, check_range

__all__ = [
    "fingerprint", "tensor_digest", "weights_digest",
    "load_artifact", "load_tensors", "read_json", "save_artifact", "save_tensors", "write_json", "write_text",
    "package_dir", "package_file",
    "check_choice", "check_finite", "check_last_dim", "check_names", "check_nonempty", "check_range",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
