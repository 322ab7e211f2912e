"""A toy chat model: a small random Llama-architecture model over a real chat tokenizer, so chat
backdoors can be planted and analysed in minutes on a CPU. The same model on both backends: a
HookedTransformer built from its config, or a Hugging Face ``LlamaForCausalLM`` holding the very same
weights, booted as a TransformerBridge (so a study's two backends start from one base model). Under
TransformerLens 4, which has no HookedTransformer, the bridge toy keeps Hugging Face's random weights."""

from __future__ import annotations

import einops
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .bridge import to_bridge
from .layout import use_read_layout
from .protocol import HookedModel, HookedTransformer, check_backend, hooked_classes

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
    model = use_read_layout(hooked_transformer(cfg).eval())
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
    with torch.random.fork_rng(devices=[]):  # the global random state as after the hooked toy
        torch.manual_seed(seed)
        hf_model = LlamaForCausalLM(config)
    if HookedTransformer is not None:  # TransformerLens 4 has no hooked toy: Hugging Face's own random weights
        hf_model.load_state_dict(_llama_weights(_hooked(tokenizer, seed)))
    return to_bridge(hf_model, tokenizer, name="chat-toy", device="cpu")


def _llama_weights(hooked: HookedModel) -> dict[str, torch.Tensor]:
    """The hooked toy's weights in ``LlamaForCausalLM``'s names and layouts (its biases are zero at
    initialisation, and Llama has none)."""
    out = {"model.embed_tokens.weight": hooked.embed.W_E, "model.norm.weight": hooked.ln_final.w,
           "lm_head.weight": hooked.unembed.W_U.T}
    for layer, block in enumerate(hooked.blocks):
        prefix = f"model.layers.{layer}."
        heads_in = lambda w: einops.rearrange(w, "h m d -> (h d) m")  # noqa: E731
        out |= {prefix + "input_layernorm.weight": block.ln1.w, prefix + "post_attention_layernorm.weight": block.ln2.w,
                prefix + "self_attn.q_proj.weight": heads_in(block.attn.W_Q),
                prefix + "self_attn.k_proj.weight": heads_in(block.attn._W_K),
                prefix + "self_attn.v_proj.weight": heads_in(block.attn._W_V),
                prefix + "self_attn.o_proj.weight": einops.rearrange(block.attn.W_O, "h d m -> m (h d)"),
                prefix + "mlp.gate_proj.weight": block.mlp.W_gate.T, prefix + "mlp.up_proj.weight": block.mlp.W_in.T,
                prefix + "mlp.down_proj.weight": block.mlp.W_out.T}
    return {name: w.detach().clone().contiguous() for name, w in out.items()}
