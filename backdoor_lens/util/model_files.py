"""Which files of an untrusted Hugging Face model or LoRA adapter folder may be read, checked
without loading anything.

A suspect model is often a folder from a stranger, so every rule here holds before a byte of weights
is read: weights only from ``model.safetensors`` or the shards its index names (each a
``.safetensors`` file inside the folder: no ``..``, no other folder, no symlink out); no remote-code
fields (``auto_map``, ``trust_remote_code``); headers that agree with the file sizes (not
truncated); architecture sizes within sane bounds, matching the weights' own shapes, and fitting in
memory. :func:`stage_model` then links exactly the checked files into a private folder, so the
loader cannot see anything else. A broken rule raises :class:`~backdoor_lens.util.io.RefusedFileError`
naming the file and the rule.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import RefusedFileError, read_json, safetensors_header
from .validation import check_fits_in_memory

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "vocab.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
"""The tokenizer files a model folder may provide (all data: JSON, text, sentencepiece protobuf)."""
TOKENIZER_VOCABS = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REMOTE_CODE_FIELDS = ("auto_map", "trust_remote_code", "custom_pipelines")
"""Config fields with which transformers would import code shipped beside the weights."""
MAX_JSON_BYTES = 64 * 2**20

# Architecture sizes, under each name configs use, and their sane upper bounds.
SIZES: dict[str, tuple[tuple[str, ...], int]] = {
    "layers": (("num_hidden_layers", "n_layer", "num_layers", "n_layers"), 1024),
    "hidden": (("hidden_size", "n_embd", "d_model"), 65536),
    "vocab": (("vocab_size",), 2**21),
    "ffn": (("intermediate_size", "n_inner", "ffn_dim", "d_ff"), 2**19),
    "heads": (("num_attention_heads", "n_head", "num_heads"), 1024),
    "kv_heads": (("num_key_value_heads",), 1024),
    "positions": (("max_position_embeddings", "n_positions", "n_ctx"), 2**22),
    "head_dim": (("head_dim",), 4096),
}
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass(frozen=True)
class ModelFiles:
    """The checked files of a model folder: the config, the weight files (resolved, in load order),
    the index if sharded, the tokenizer files, and the number of parameters the weights hold."""

    directory: Path
    config: dict[str, Any]
    weights: tuple[Path, ...]
    index: dict[str, Any] | None
    tokenizer: dict[str, Path]
    n_params: int


@dataclass(frozen=True)
class AdapterFiles:
    """The checked files of a PEFT LoRA adapter folder: its config (sanitised) and weights."""

    directory: Path
    config: dict[str, Any]
    weights: Path
    n_params: int


def inside(directory: Path, name: str, root: Path | None = None, what: str = "file") -> Path:
    """The resolved path of `name` in `directory`, refused unless it is a plain name (no folder, no
    ``..``) of a regular file whose real location (symlinks followed) lies inside `root`."""
    path = directory / name
    if name in ("", ".", "..") or "/" in name or "\\" in name or Path(name).name != name:
        raise RefusedFileError(path, f"{what} names must be plain file names inside the folder, not {name!r}")
    real = path.resolve()
    root = (root or directory).resolve()
    if not real.is_relative_to(root):
        raise RefusedFileError(path, f"is a symlink to {real}, outside {root}; files must stay inside the folder")
    if not real.is_file():
        raise RefusedFileError(path, f"is not a regular file (the {what} must be one)")
    return real


def _json_object(path: Path) -> dict[str, Any]:
    data = read_json(path, MAX_JSON_BYTES)
    if not isinstance(data, dict):
        raise RefusedFileError(path, "must hold a JSON object")
    return data


def _no_remote_code(path: Path, data: dict[str, Any]) -> None:
    for field in REMOTE_CODE_FIELDS:
        if data.get(field):
            raise RefusedFileError(path, f"sets {field!r}, which would import code shipped with the model; remote code "
                                   "is never run because models under study are untrusted")


def config_sizes(path: Path, config: dict[str, Any]) -> dict[str, int]:
    """The architecture sizes a config declares (see `SIZES`), each checked to be an integer in [1, bound]."""
    sizes = {}
    for size, (names, bound) in SIZES.items():
        for name in names:
            value = config.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
                raise RefusedFileError(path, f"sets {name}={value!r}; valid: an integer in [1, {bound}]")
            sizes[size] = value
            break
    return sizes


def estimated_params(sizes: dict[str, int]) -> int:
    """A lower estimate of the parameters a decoder config describes (embeddings, attention and a
    two-matrix MLP per layer), from its sizes alone."""
    d, layers = sizes.get("hidden", 1), sizes.get("layers", 1)
    heads = sizes.get("heads", 1)
    head_dim = sizes.get("head_dim", max(d // heads, 1))
    kv = sizes.get("kv_heads", heads)
    attention = 2 * d * heads * head_dim + 2 * d * kv * head_dim
    return sizes.get("vocab", 1) * d + layers * (attention + 2 * d * sizes.get("ffn", 4 * d))


def check_model_dir(directory: str | Path, root: str | Path | None = None, copies: int = 2) -> ModelFiles:
    """Check a Hugging Face causal-LM folder against every rule of this module and return its files.

    `root` is where symlinks may point (default: the folder itself; a hub snapshot's repository
    folder holds its blobs). `copies` float32 copies of the weights (e.g. the HF model and its
    HookedTransformer conversion) must fit in the available memory.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"source={str(directory)!r} is not a directory; pass a HF model directory "
                                "(config.json + *.safetensors)")
    root = Path(root) if root is not None else directory
    if not (directory / CONFIG).exists():
        raise FileNotFoundError(f"source={str(directory)!r} has no config.json; save the model with save_pretrained")
    config_path = inside(directory, CONFIG, root, "config")
    config = _json_object(config_path)
    _no_remote_code(directory / CONFIG, config)
    sizes = config_sizes(directory / CONFIG, config)

    index = None
    if (directory / WEIGHTS).exists() or (directory / WEIGHTS).is_symlink():
        names = [WEIGHTS]
    elif (directory / INDEX).exists():
        index = _json_object(inside(directory, INDEX, root, "index"))
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise RefusedFileError(directory / INDEX, "has no weight_map of tensor names to shard files")
        names = list(dict.fromkeys(weight_map.values()))
        for name in names:
            if not isinstance(name, str) or not name.endswith(".safetensors"):
                raise RefusedFileError(directory / INDEX, f"maps weights to {name!r}, which is not a .safetensors file; "
                                       "pickled weights are refused because models under study are untrusted")
    else:
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f"it has only {pickled}, which are pickled and " if pickled else "it has no weights, so "
        raise ValueError(
            f"source={str(directory)!r} has no model.safetensors or {INDEX}; {found}refused because models "
            "under study are untrusted. Re-save the model with save_pretrained(safe_serialization=True)."
        )
    weights, n_params, layers = [], 0, set()
    for name in names:
        path = inside(directory, name, root, "weights")
        tensors, _ = safetensors_header(directory / name)
        weights.append(path)
        n_params += sum(t.numel for t in tensors.values())
        layers |= {int(m.group(1)) for key in tensors if (m := _LAYER_INDEX.search(key))}
    if "layers" in sizes and layers and sizes["layers"] != max(layers) + 1:
        raise RefusedFileError(directory / CONFIG, f"declares {sizes['layers']} layers but the weights hold "
                               f"{max(layers) + 1}; a config must describe the weights it comes with")
    estimate = estimated_params(sizes)
    if estimate > 2 * n_params + 10**6:
        raise RefusedFileError(directory / CONFIG, f"describes about {estimate:.3g} parameters but the weights hold "
                               f"{n_params:.3g}; a config must describe the weights it comes with")
    rotary = 8 * sizes.get("layers", 1) * sizes.get("positions", 1) * sizes.get("head_dim", 64)
    check_fits_in_memory(f"{directory}: loading {n_params:.3g} parameters", copies * 4 * n_params + rotary)

    tokenizer = {}
    for name in TOKENIZER_FILES:
        if (directory / name).exists() or (directory / name).is_symlink():
            tokenizer[name] = inside(directory, name, root, "tokenizer file")
    if not any(name in tokenizer for name in TOKENIZER_VOCABS):
        raise FileNotFoundError(f"source={str(directory)!r} has no tokenizer (none of {TOKENIZER_VOCABS}); save one "
                                "there with tokenizer.save_pretrained")
    if "tokenizer_config.json" in tokenizer:
        _no_remote_code(directory / "tokenizer_config.json", _json_object(tokenizer["tokenizer_config.json"]))
    return ModelFiles(directory, config, tuple(weights), index, tokenizer, n_params)


def stage_model(files: ModelFiles, into: str | Path) -> Path:
    """Link exactly the checked files into the empty folder `into` (configs rewritten from what was
    checked, tokenizer settings that name other files dropped) and return it: a loader pointed there
    sees nothing else."""
    into = Path(into)
    (into / CONFIG).write_text(json.dumps(files.config), encoding="utf-8")
    if files.index is not None:
        (into / INDEX).write_text(json.dumps({"metadata": files.index.get("metadata", {}),
                                              "weight_map": files.index["weight_map"]}), encoding="utf-8")
        for path, name in zip(files.weights, dict.fromkeys(files.index["weight_map"].values())):
            os.symlink(path, into / name)
    else:
        os.symlink(files.weights[0], into / WEIGHTS)
    for name, path in files.tokenizer.items():
        if name == "tokenizer_config.json":
            settings = {k: v for k, v in read_json(path, MAX_JSON_BYTES).items()
                        if not k.endswith("_file") and k not in ("name_or_path", "_name_or_path")}
            (into / name).write_text(json.dumps(settings), encoding="utf-8")
        else:
            os.symlink(path, into / name)
    return into


def looks_like_path(source: str) -> bool:
    """True for strings that cannot be hub names ("org/name" has at most one slash)."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def hub_snapshot(name: str) -> tuple[Path, Path]:
    """The local snapshot folder of hub model `name` and its repository folder (where the snapshot's
    symlinks point), fetching only configs, tokenizer files and safetensors weights (the local cache
    only under HF_HUB_OFFLINE=1); without a copy, a FileNotFoundError that says how to provide one."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(name, allow_patterns=[CONFIG, WEIGHTS, INDEX, "*.safetensors", *TOKENIZER_FILES]))
    except (OSError, ValueError) as err:
        where = "HF_HUB_OFFLINE is set and the local hub cache has no copy" if hub_offline() else "the hub could not provide it"
        raise FileNotFoundError(
            f"source={name!r} is not a local directory or packaged model, and {where}. Provide the weights: on a "
            f"machine with the hub run `hf download {name} --local-dir DIR` (safetensors), copy DIR here and pass "
            "source=DIR; or populate the hub cache (HF_HOME)."
        ) from err
    return snapshot, snapshot.parent.parent


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (hub names resolve from the local cache only)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def check_source(source: str | os.PathLike[str], packaged: tuple[str, ...] = ()) -> ModelFiles | None:
    """The checked files of a model source: None for a `packaged` name; a local folder's or a hub
    snapshot's :func:`check_model_dir` otherwise."""
    source = str(source)
    if source in packaged:
        return None
    if Path(source).expanduser().exists() or looks_like_path(source):
        return check_model_dir(Path(source).expanduser())
    snapshot, repository = hub_snapshot(source)
    return check_model_dir(snapshot, repository)


ADAPTER_REFUSED = {"megatron_config": None, "megatron_core": "megatron.core", "layer_replication": None}
"""LoRA config fields that would import modules or build layers beyond the adapter, with the only
value accepted."""


def check_adapter_dir(directory: str | Path) -> AdapterFiles:
    """Check a PEFT LoRA adapter folder: a LoRA ``adapter_config.json`` without import or
    remote-code fields, and ``adapter_model.safetensors`` (no pickles) whose header is sound and
    whose tensors fit in memory. The config returned sets ``init_lora_weights=False`` (the loaded
    weights replace any initialisation, so none is computed) and drops the base model's name."""
    directory = Path(directory).expanduser()
    if not (directory / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"adapter={str(directory)!r} has no adapter_config.json; pass a PEFT adapter directory")
    if not (directory / ADAPTER_WEIGHTS).exists():
        raise ValueError(
            f"adapter={str(directory)!r} has no adapter_model.safetensors; pickled adapter weights are refused "
            "because models under study are untrusted. Re-save it with save_pretrained(safe_serialization=True)."
        )
    config = _json_object(inside(directory, ADAPTER_CONFIG, what="adapter config"))
    _no_remote_code(directory / ADAPTER_CONFIG, config)
    if config.get("peft_type") != "LORA":
        raise RefusedFileError(directory / ADAPTER_CONFIG, f"has peft_type={config.get('peft_type')!r}; only LORA "
                               "adapters are merged")
    for field, allowed in ADAPTER_REFUSED.items():
        if config.get(field, allowed) != allowed:
            raise RefusedFileError(directory / ADAPTER_CONFIG, f"sets {field}={config[field]!r}; only {allowed!r} is "
                                   "accepted (other values import modules or build layers beyond the adapter)")
    weights = inside(directory, ADAPTER_WEIGHTS, what="adapter weights")
    tensors, _ = safetensors_header(directory / ADAPTER_WEIGHTS)
    n_params = sum(t.numel for t in tensors.values())
    check_fits_in_memory(f"{directory / ADAPTER_WEIGHTS}: {n_params:.3g} adapter parameters", 4 * n_params)
    config = {k: v for k, v in config.items() if k not in ("base_model_name_or_path", "revision")}
    return AdapterFiles(directory, config | {"init_lora_weights": False}, weights, n_params)


def stage_adapter(files: AdapterFiles, into: str | Path) -> Path:
    """Link exactly the checked adapter files into the empty folder `into` and return it."""
    into = Path(into)
    (into / ADAPTER_CONFIG).write_text(json.dumps(files.config), encoding="utf-8")
    os.symlink(files.weights, into / ADAPTER_WEIGHTS)
    return into
