"""Build toy HookedTransformers and save/load any HookedTransformer as safetensors + JSON (never pickle)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities.activation_functions import apply_softcap

from .io import load_tensors, read_json, save_tensors, write_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def toy_config(
    d_vocab: int,
    n_ctx: int = 16,
    n_layers: int = 3,
    n_heads: int = 4,
    d_model: int = 64,
    seed: int = 0,
) -> HookedTransformerConfig:
    """The paper's toy GPT-2: 3 layers, 4 heads, d_model 64, a word-level vocabulary."""
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    return HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=4 * d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=seed,
        device="cpu",
    )


def build_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    """A freshly initialised HookedTransformer (seeded by `cfg.seed`), without a HF tokenizer."""
    return HookedTransformer(cfg)


def final_logits(
    model: HookedTransformer, resid: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """What the forward pass does after its last block (final norm, unembedding, soft-cap), for a
    residual stream taken with ``stop_at_layer``: logits at chosen positions only are much cheaper."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)


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


def load_current_weights(model: HookedTransformer, path: str | Path, key: str) -> dict[str, Any] | None:
    """Load the (possibly partial) weights saved at `path` into `model` when they were saved under
    `key` (e.g. a fingerprint of the data and training settings); returns the file's metadata, or
    None when there is no such file or it is stale. Used to reuse trained weights across runs."""
    path = Path(path)
    if not path.exists():
        return None
    weights, metadata = load_tensors(path)
    if metadata.get("key") != key:
        return None
    model.load_state_dict(weights, strict=False)
    return metadata


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's contents (e.g. training tokens), to key cached models on their data."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (used to tell whether a cached artifact is current)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
