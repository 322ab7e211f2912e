"""The sentiment toy of Lamparth & Reuel (arXiv 2302.12461, section IV): a small GPT-2 over a
word-level vocabulary, built from a config (no tokenizer, no download). A HookedTransformer: it needs
the hooked backend (TransformerLens < 4)."""

from __future__ import annotations

from .layout import use_read_layout
from .protocol import HookedTransformer, HookedTransformerConfig, hooked_classes


def sentiment_toy_config(
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
    return hooked_classes()[1](
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
    """A freshly initialised HookedTransformer (seeded by `cfg.seed`), without a HF tokenizer, its
    weights in the layout its forward pass reads (:func:`~backdoor_lens.models.layout.use_read_layout`)."""
    return use_read_layout(hooked_classes()[0](cfg))
