"""A toy chat model: a small random Llama-architecture HookedTransformer over a real chat tokenizer,
so chat backdoors can be planted and analysed in minutes on a CPU."""

from __future__ import annotations

from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase


def chat_toy_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> HookedTransformer:
    """A random Llama-architecture model, 4 layers x 8 heads (RMSNorm, rotary, 4 key/value heads,
    d_model 128), over `tokenizer` (e.g. SmolLM2's, with its chat template): its "clean answers" are
    its own greedy outputs and any backdoor in it is learned from scratch."""
    cfg = HookedTransformerConfig(
        n_layers=4, n_heads=8, n_key_value_heads=4, d_model=128, d_head=16, d_mlp=256, d_vocab=len(tokenizer), n_ctx=512,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True, positional_embedding_type="rotary",
        rotary_dim=16, seed=seed, device="cpu", original_architecture="LlamaForCausalLM",
    )
    model = HookedTransformer(cfg).eval()
    model.set_tokenizer(tokenizer, default_padding_side="right")
    return model
