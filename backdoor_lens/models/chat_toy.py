"""A toy chat model: a small random Llama-architecture model over a real chat tokenizer, so chat
backdoors can be planted and analysed in minutes on a CPU. The same architecture on both backends:
a HookedTransformer built from its config, or a Hugging Face ``LlamaForCausalLM`` booted as a
TransformerBridge (random weights either way, drawn differently by each library)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .bridge import to_bridge
from .protocol import HookedModel, check_backend, hooked_classes

SHAPE = {"n_layers": 4, "n_heads": 8, "n_key_value_heads": 4, "d_model": 128, "d_head": 16, "d_mlp": 256, "n_ctx": 512}
"""The toy's architecture: 4 layers x 8 heads sharing 4 key/value heads, d_model 128, MLP 256, 512 positions."""
EPS, ROTARY_BASE = 1e-5, 10000.0
"""RMSNorm epsilon and rotary base of HookedTransformerConfig's defaults, given to the HF config too."""


def chat_toy_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0, backend: str = "hooked") -> HookedModel:
    """A random Llama-architecture model (RMSNorm, rotary, grouped-query attention, gated SiLU MLP;
    see :data:`SHAPE`) over `tokenizer` (e.g. SmolLM2's, with its chat template): its "clean
    answers" are its own greedy outputs and any backdoor in it is learned from scratch.
    `backend` is ``"hooked"`` (a HookedTransformer) or ``"bridge"`` (a TransformerBridge)."""
    check_backend(backend)
    return _hooked(tokenizer, seed) if backend == "hooked" else _bridge(tokenizer, seed)


def _hooked(tokenizer: PreTrainedTokenizerBase, seed: int) -> HookedModel:
    hooked_transformer, config = hooked_classes()
    cfg = config(
        **SHAPE, d_vocab=len(tokenizer), act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True,
        positional_embedding_type="rotary", rotary_dim=SHAPE["d_head"], seed=seed,
        device="cpu", original_architecture="LlamaForCausalLM",
    )
    model = hooked_transformer(cfg).eval()
    model.set_tokenizer(tokenizer, default_padding_side="right")
    return model


def _bridge(tokenizer: PreTrainedTokenizerBase, seed: int) -> HookedModel:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=SHAPE["d_model"], intermediate_size=SHAPE["d_mlp"],
        num_hidden_layers=SHAPE["n_layers"], num_attention_heads=SHAPE["n_heads"],
        num_key_value_heads=SHAPE["n_key_value_heads"], head_dim=SHAPE["d_head"],
        max_position_embeddings=SHAPE["n_ctx"], rms_norm_eps=EPS, rope_theta=ROTARY_BASE, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = LlamaForCausalLM(config)
    return to_bridge(hf_model, tokenizer, name="chat-toy", device="cpu")
