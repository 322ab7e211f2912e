"""Boot an already-loaded Hugging Face causal LM as a TransformerLens ``TransformerBridge``, offline.

``TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)`` wraps hook points
around the HF model's own modules (in place: the HF model becomes part of the bridge), reading the
architecture from the model's config, so nothing is fetched. Weights stay as HF has them (no folding
or centring): every hook activation equals the HF model's, as with the unprocessed HookedTransformer
of :func:`~backdoor_lens.models.pretrained.to_hooked_transformer`, and the logits are checked against
the HF model's before it is handed back.

``compatibility=True`` calls ``enable_compatibility_mode()``: LayerNorm folded into the next weights,
writing weights and the unembedding centred, as HookedTransformer's defaults do. Logits then differ
from HF's by a constant per position (log-probabilities do not), and the residual stream is centred.
The library's logit lens (:func:`~backdoor_lens.analysis.lens.unembed`) applies the final norm itself
and gives the same answers either way, so the default keeps HF's weights.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .protocol import HookedModel, bridge_class

_CHECK_TOKENS = 8


def to_bridge(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "cpu",
    prepend_bos: bool | None = None,
    compatibility: bool = False,
) -> HookedModel:
    """Boot `hf_model` (float32, eval mode) as a TransformerBridge with `tokenizer`, check its logits
    against the HF model's, then cast it to `dtype`.

    `device` moves a model that sits on one device; a model dispatched with a ``device_map`` (it has
    ``hf_device_map``) stays where accelerate put it and `device` must be None. One that accelerate
    offloaded to disk (its devices' ``max_memory`` too small) is refused: the bridge's components
    read their weights directly, past accelerate's offload hooks. `prepend_bos=None` makes
    ``model.to_tokens(text)`` prepend BOS exactly when the HF tokenizer does.
    """
    placement = getattr(hf_model, "hf_device_map", None) or {}
    offloaded = sorted(module or "(the whole model)" for module, where in placement.items() if str(where) in ("disk", "meta"))
    if offloaded:
        raise ValueError(
            f"{name}: accelerate offloaded {', '.join(offloaded[:4])} to disk, beyond the devices' max_memory; "
            "TransformerBridge runs only models whose weights sit on devices (CPU or GPUs), so raise max_memory or "
            "add devices"
        )
    dispatched = bool(placement)
    if dispatched and device is not None:
        raise ValueError(f"device={device!r} cannot move a model dispatched with a device_map; pass device=None")
    if not dispatched:
        hf_model = hf_model.to(device=device, dtype=torch.float32)
    hf_model.eval()
    if not hf_model.config.architectures:  # GGUF configs name none; the bridge picks its adapter by it
        hf_model.config.architectures = [type(hf_model).__name__]
    if prepend_bos is None:
        prepend_bos = len(tokenizer("").input_ids) > 0
    tokens, expected = _reference_logits(hf_model)
    bridge = bridge_class().boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=None if dispatched else device, dtype=torch.float32
    )
    bridge.cfg.default_prepend_bos = prepend_bos
    _check_logits(bridge, tokens, expected, name)
    if compatibility:
        bridge.enable_compatibility_mode(disable_warnings=True)
    if dtype != torch.float32:
        bridge.to(dtype, print_details=False)
    return bridge.eval()


@torch.inference_mode()
def _reference_logits(hf_model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """A few spread-out tokens and the HF model's logits on them, taken before the bridge wraps it."""
    embedding = hf_model.get_input_embeddings().weight
    tokens = torch.linspace(0, embedding.shape[0] - 1, _CHECK_TOKENS).long()[None].to(embedding.device)
    return tokens, hf_model(tokens).logits.float()


@torch.inference_mode()
def _check_logits(bridge: Any, tokens: torch.Tensor, expected: torch.Tensor, name: str, rtol: float = 1e-3) -> None:
    """Raise if the bridge's logits differ from the HF model's on `tokens`."""
    got = bridge(tokens).float().to(expected.device)
    diff = (got - expected).abs().max().item()
    if diff > rtol * max(1.0, expected.abs().max().item()):
        raise RuntimeError(f"{name}: the TransformerBridge's logits differ from the HF model's by {diff:.3g}")
