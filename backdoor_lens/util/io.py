"""Atomic, pickle-free persistence: JSON, text and tensors (safetensors) written so nothing is half-lost."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_replace(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_replace(Path(path), write)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON atomically (stable bytes for equal content)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON value stored at `path`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Save tensors as safetensors, with JSON metadata stored in the file's header."""
    header = {"json": json.dumps(metadata or {}, sort_keys=True)}
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_replace(Path(path), lambda tmp: save_file(contiguous, tmp, metadata=header))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and metadata written by :func:`save_tensors` (never unpickles)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = json.loads((f.metadata() or {}).get("json", "{}"))
    return load_file(str(path)), metadata


def save_artifact(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], **metadata: Any) -> None:
    """Save a fitted artifact (means, PCA basis, PCP edit): tensors plus its `kind` and metadata."""
    save_tensors(path, tensors, {"kind": kind, **metadata})


def load_artifact(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load an artifact saved by :func:`save_artifact`, checking it is of the expected `kind`."""
    tensors, metadata = load_tensors(path)
    if metadata.get("kind") != kind:
        raise ValueError(f"path={str(path)!r} holds kind={metadata.get('kind')!r}, not {kind!r}")
    return tensors, metadata
