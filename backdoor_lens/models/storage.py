"""Save and load any HookedTransformer as ``config.json`` + ``model.safetensors`` (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..util.io import load_tensors, read_json, save_tensors, write_json
from .toy import build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def config_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """A JSON-safe dict from which :func:`config_from_json` rebuilds the config."""
    out = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def config_from_json(data: dict[str, Any]) -> HookedTransformerConfig:
    """The HookedTransformerConfig saved by :func:`config_to_json` (unknown keys ignored)."""
    data = dict(data)
    if "dtype" in data:
        data["dtype"] = getattr(torch, data["dtype"])
    fields = HookedTransformerConfig.__dataclass_fields__
    return HookedTransformerConfig(**{k: v for k, v in data.items() if k in fields and fields[k].init})


def save_model(model: HookedTransformer, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write `config.json` and `model.safetensors` (weights plus `metadata` in its header)."""
    directory = Path(directory)
    save_tensors(directory / WEIGHTS_FILE, model.state_dict(), metadata)
    write_json(directory / CONFIG_FILE, config_to_json(model.cfg))


def load_model(directory: str | Path) -> tuple[HookedTransformer, dict[str, Any]]:
    """Load a model saved by :func:`save_model`; returns it (in eval mode) and its metadata."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).exists():
            raise FileNotFoundError(f"directory={str(directory)!r} has no {name}; save it with save_model first")
    model = build_model(config_from_json(read_json(directory / CONFIG_FILE)))
    state, metadata = load_tensors(directory / WEIGHTS_FILE)
    model.load_state_dict(state)
    return model.eval(), metadata
