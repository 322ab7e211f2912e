"""Save and load any HookedTransformer as ``config.json`` + ``model.safetensors`` (never pickle).

A saved folder may come from a stranger, so :func:`load_model` reads only architecture fields from
``config.json`` (never a tokenizer name, remote code, checkpoint or quantisation setting, which would
make TransformerLens download or import something), checks every size against sane bounds, against
the weights' own shapes (from the safetensors header, nothing loaded) and against the available
memory, all before allocating the model. :func:`save_model` writes the config, then the weights,
then ``complete.json``, so a folder cut short by a kill is recognisable (:func:`saved_completely`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

from ..util.io import RefusedFileError, load_tensors, read_json, safetensors_header, save_tensors, write_json
from ..util.model_files import PICKLE_SUFFIXES, inside
from ..util.validation import check_fits_in_memory
from .protocol import HookedTransformer, HookedTransformerConfig, hooked_classes
from .toy import build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
COMPLETE_FILE = "complete.json"
"""Written last by :func:`save_model`: the sizes of the files it wrote."""

_INT_FIELDS = {  # field: (low, high, may be null)
    "d_model": (1, 65536, False), "d_head": (1, 4096, False), "n_layers": (1, 1024, False),
    "n_ctx": (1, 2**20, False), "n_heads": (1, 1024, False), "d_mlp": (1, 2**19, True), "d_vocab": (1, 2**21, False),
    "d_vocab_out": (1, 2**21, False), "n_key_value_heads": (1, 1024, True), "rotary_dim": (1, 4096, True),
    "window_size": (1, 2**20, True), "seed": (0, 2**32 - 1, True), "NTK_original_ctx_len": (1, 2**22, False),
    "yarn_original_max_position_embeddings": (1, 2**22, False),
}
_FLOAT_FIELDS = (
    "eps", "attn_scale", "initializer_range", "rotary_base", "rotary_scaling_factor", "attn_scores_soft_cap",
    "output_logits_soft_cap", "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor",
    "yarn_factor", "yarn_attention_factor", "yarn_beta_fast", "yarn_beta_slow",
)
_BOOL_FIELDS = (
    "attn_only", "gated_mlp", "final_rms", "uses_rms_norm", "use_attn_scale", "parallel_attn_mlp", "use_local_attn",
    "scale_attn_by_inverse_layer_idx", "post_embedding_ln", "rotary_adjacent_pairs", "use_qk_norm",
    "use_normalization_before_and_after", "default_prepend_bos", "tokenizer_prepends_bos", "use_attn_result",
    "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens", "ungroup_grouped_query_attention",
    "layer_norm_folding", "use_logn_attn", "use_dynamic_ntk_rope", "use_NTK_by_parts_rope", "use_yarn_rope",
    "yarn_truncate", "yarn_global_attn_only", "use_attention_sinks", "tie_word_embeddings", "init_weights",
)
_CHOICE_FIELDS = {
    "act_fn": tuple(SUPPORTED_ACTIVATIONS),
    "normalization_type": ("LN", "LNPre", "RMS", "RMSPre", None),
    "positional_embedding_type": ("standard", "rotary", "shortformer", "alibi"),
    "dtype": ("float32", "float64", "float16", "bfloat16"),
    "attention_dir": ("causal", "bidirectional"),
    "init_mode": ("gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "muP"),
}
_TEXT_FIELDS = ("model_name", "original_architecture")
_IGNORED_FIELDS = ("device", "n_params", "n_devices")
"""Written by older versions of :func:`config_to_json`; the model always loads on the CPU, and the
parameter count is recomputed."""
ARCHITECTURE_FIELDS = (*_INT_FIELDS, *_FLOAT_FIELDS, *_BOOL_FIELDS, *_CHOICE_FIELDS, *_TEXT_FIELDS, "attn_types")
"""The config fields :func:`load_model` reads. Any other field must be absent or at its default
(tokenizer_name, trust_remote_code, from_checkpoint, load_in_4bit, ... make TransformerLens fetch or
import something)."""


def config_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The architecture fields of `cfg` as a JSON-safe dict, from which :func:`config_from_json` rebuilds it."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key not in ARCHITECTURE_FIELDS:
            continue
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def _field_error(key: str, value: Any, valid: str) -> ValueError:
    return ValueError(f"field {key}={value!r} is not valid; valid: {valid}")


def _check_field(key: str, value: Any) -> None:
    """Raise ValueError unless an architecture field's value has its type and lies within its bounds."""
    if key in _INT_FIELDS:
        low, high, nullable = _INT_FIELDS[key]
        if value is None and nullable:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _field_error(key, value, f"an integer in [{low}, {high}]" + (" or null" if nullable else ""))
    elif key in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _field_error(key, value, "a finite number")
    elif key in _BOOL_FIELDS:
        if not isinstance(value, bool) and not (key == "tokenizer_prepends_bos" and value is None):
            raise _field_error(key, value, "true or false")
    elif key in _CHOICE_FIELDS:
        if value not in _CHOICE_FIELDS[key]:
            raise _field_error(key, value, ", ".join(map(repr, _CHOICE_FIELDS[key])))
    elif key in _TEXT_FIELDS:
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            raise _field_error(key, value, "a string of at most 200 characters")
    elif key == "attn_types":
        if value is not None and (not isinstance(value, list) or not set(value) <= {"global", "local"}):
            raise _field_error(key, value, 'null or a list of "global" / "local"')


def config_from_json(data: dict[str, Any]) -> HookedTransformerConfig:
    """The HookedTransformerConfig saved by :func:`config_to_json`, read through an allow-list.

    Architecture fields (`ARCHITECTURE_FIELDS`) are type- and bound-checked; any other field of
    HookedTransformerConfig must be at its default (it would make TransformerLens fetch a
    tokenizer, import code, load a checkpoint or quantise); unknown fields are refused. Raises
    ValueError naming the field and the rule.
    """
    if not isinstance(data, dict):
        raise ValueError("a model config must be a JSON object")
    config_class = hooked_classes()[1]
    fields = {k: f for k, f in config_class.__dataclass_fields__.items() if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ARCHITECTURE_FIELDS:
            _check_field(key, value)
            kwargs[key] = value
        elif key in _IGNORED_FIELDS:
            continue
        elif key not in fields:
            raise ValueError(f"field {key!r} is not a HookedTransformerConfig field; load_model reads only "
                             "architecture fields")
        elif value != fields[key].default:
            raise ValueError(f"field {key}={value!r} is not allowed (only its default {fields[key].default!r}): "
                             "load_model reads only architecture fields, and this one makes TransformerLens fetch, "
                             "import or load something beyond the saved weights")
    required = ("d_model", "d_head", "n_layers", "n_ctx", "d_vocab")
    for key in required:
        if key not in kwargs:
            raise ValueError(f"field {key!r} is missing; a saved config needs {', '.join(required)}")
    if "dtype" in kwargs:
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    return config_class(**kwargs, device="cpu")


def _memory_needed(cfg: HookedTransformerConfig) -> int:
    """Bytes the model's parameters and rotary buffers take, computed from the config alone."""
    d, layers, heads, d_head = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head
    kv = cfg.n_key_value_heads or heads
    per_layer = 2 * d * heads * d_head + 2 * d * kv * d_head + 4 * d
    if not cfg.attn_only:
        per_layer += (3 if cfg.gated_mlp else 2) * d * (cfg.d_mlp or 4 * d)
    params = cfg.d_vocab * d + d * cfg.d_vocab_out + layers * per_layer
    if cfg.positional_embedding_type in ("standard", "shortformer"):
        params += cfg.n_ctx * d
    rotary = 2 * layers * cfg.n_ctx * (cfg.rotary_dim or d_head) * 4 if cfg.positional_embedding_type == "rotary" else 0
    return params * torch.empty((), dtype=cfg.dtype).element_size() + rotary


def save_model(model: HookedTransformer, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write `config.json`, then `model.safetensors` (weights plus `metadata` in its header), then
    `complete.json`, so a folder whose writer was killed lacks the last."""
    directory = Path(directory)
    (directory / COMPLETE_FILE).unlink(missing_ok=True)
    write_json(directory / CONFIG_FILE, config_to_json(model.cfg))
    save_tensors(directory / WEIGHTS_FILE, model.state_dict(), metadata)
    write_json(directory / COMPLETE_FILE, {name: (directory / name).stat().st_size for name in (CONFIG_FILE, WEIGHTS_FILE)})


def saved_completely(directory: str | Path) -> bool:
    """True when :func:`save_model` finished writing `directory` and its files still have the sizes it wrote."""
    directory = Path(directory)
    try:
        sizes = read_json(directory / COMPLETE_FILE)
        return all((directory / name).stat().st_size == sizes.get(name) for name in (CONFIG_FILE, WEIGHTS_FILE))
    except (OSError, ValueError, AttributeError):
        return False


def load_model(directory: str | Path) -> tuple[HookedTransformer, dict[str, Any]]:
    """Load a model saved by :func:`save_model` (on the CPU, in eval mode); returns it and its metadata.

    Every check runs before the model is allocated: both files lie inside the folder (no symlink
    out), the config's fields (see :func:`config_from_json`), the weights' header, that the config
    describes those weights, and that the model fits in memory. A broken rule raises :class:`~backdoor_lens.util.io.RefusedFileError`
    naming the file.
    """
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).exists():
            pickled = sorted(p.name for p in directory.glob("*") if p.suffix in PICKLE_SUFFIXES)
            never = f" ({pickled} are pickled and never read: models under study are untrusted)" if pickled else ""
            raise FileNotFoundError(f"directory={str(directory)!r} has no {name}{never}; save it with save_model first")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        inside(directory, name)
    try:
        cfg = config_from_json(read_json(config_path, max_bytes=2**20))
    except RefusedFileError:
        raise
    except (ValueError, TypeError, AssertionError) as err:
        raise RefusedFileError(config_path, str(err)) from err
    check_fits_in_memory(f"{config_path}: a model of this config", _memory_needed(cfg))
    tensors, _ = safetensors_header(weights_path)
    expected = {"embed.W_E": (cfg.d_vocab, cfg.d_model), "unembed.W_U": (cfg.d_model, cfg.d_vocab_out)}
    for name, shape in expected.items():
        if name in tensors and tensors[name].shape != shape:
            raise RefusedFileError(config_path, f"describes {name} of shape {list(shape)} but {WEIGHTS_FILE} holds "
                                   f"{list(tensors[name].shape)}; a config must describe the weights it comes with")
    layers = {int(key.split(".")[1]) for key in tensors if key.startswith("blocks.") and key.split(".")[1].isdigit()}
    if layers and max(layers) + 1 != cfg.n_layers:
        raise RefusedFileError(config_path, f"declares n_layers={cfg.n_layers} but {WEIGHTS_FILE} holds "
                               f"{max(layers) + 1} layers; a config must describe the weights it comes with")
    state, metadata = load_tensors(weights_path)
    model = build_model(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RefusedFileError(weights_path, f"does not fit the config's model: {err}") from err
    return model.eval(), metadata
