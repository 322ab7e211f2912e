"""A key/value cache for incremental forward passes, one interface on both backends: each call runs
only the new tokens, attending to the cached keys and values of the earlier ones.

- HookedTransformer: TransformerLens's own ``TransformerLensKeyValueCache`` (``past_kv_cache=``),
  which keeps the attention mask of the cached positions itself.
- TransformerBridge: Hugging Face's ``DynamicCache``, passed through the bridge to the HF model with
  the attention mask of every position so far (the bridge derives rotary and learned positions from
  it, so left padding works). Recent transformers (5.2x) hand the cache to attention layers as
  ``cache=``, while TransformerLens's bridge attention (3.9 and 4.3) reads ``past_key_values=``, so
  the cache would silently stay empty; while a :class:`KVCache` runs, a pre-hook on each attention
  module passes it under both names.

Hooks on the model fire in every call, on the new positions only.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int

from ..models.protocol import HookedModel, is_bridge


class KVCache:
    """Cached keys and values of the positions run so far for a batch of `batch_size` rows of `model`."""

    def __init__(self, model: HookedModel, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        self.bridge = is_bridge(model)
        if self.bridge:
            from transformers import DynamicCache

            self._state: Any = DynamicCache()
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            self._state = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)
        self._mask = torch.zeros(batch_size, 0, dtype=torch.long, device=model.cfg.device)

    @property
    def length(self) -> int:
        """How many positions are cached."""
        return self._mask.shape[1]

    def forward(
        self, tokens: Int[torch.Tensor, "batch new"], attention_mask: Int[torch.Tensor, "batch new"] | None = None, **kwargs: Any
    ) -> Float[torch.Tensor, "batch new d_vocab"]:
        """Logits of `tokens` (the positions after the cached ones; `attention_mask` 0 on padding,
        all ones when None), caching their keys and values; `kwargs` go to the forward pass."""
        device = self._mask.device
        tokens = tokens.to(device)
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"tokens has {tokens.shape[0]} rows; this cache holds {self.batch_size}")
        new = torch.ones_like(tokens) if attention_mask is None else attention_mask.to(device=device, dtype=torch.long)
        mask = torch.cat([self._mask, new], dim=1)
        if self.bridge:
            with _cache_reaches_attention(self.model):
                logits = self.model(tokens, attention_mask=mask, use_cache=True, **{_cache_kwarg(self.model): self._state},
                                    **kwargs)
        else:
            logits = self.model(tokens, attention_mask=new, past_kv_cache=self._state, **kwargs)
        self._mask = mask
        return logits

    def prefix_copies(self, length: int, copies: int) -> "KVCache":
        """A new cache holding the first `length` cached positions of every row, the batch repeated
        `copies` times (row ``i * batch_size + b`` is a copy of row b), e.g. to run several variants
        of the same suffix in one batch. This cache is left as it is."""
        if not 0 < length <= self.length:
            raise ValueError(f"length={length} must lie in [1, {self.length}], the positions this cache holds")
        mask = self._mask[:, :length].repeat(copies, 1)
        if self.bridge:
            from transformers import DynamicCache

            state = DynamicCache()
            for index, layer in enumerate(self._state.layers):
                keys, values = (t[:, :, :length].repeat(copies, 1, 1, 1) for t in (layer.keys, layer.values))
                state.update(keys, values, index)
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
            from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

            entries = [
                TransformerLensKeyValueCacheEntry(
                    e.past_keys[:, :length].repeat(copies, 1, 1, 1), e.past_values[:, :length].repeat(copies, 1, 1, 1)
                )
                for e in self._state.entries
            ]
            state = TransformerLensKeyValueCache(entries, mask.to(self._state.previous_attention_mask))
        copy = KVCache.__new__(KVCache)
        copy.model, copy.batch_size, copy.bridge, copy._state, copy._mask = self.model, len(mask), self.bridge, state, mask
        return copy


def _cache_kwarg(model: HookedModel) -> str:
    """The name under which the HF model's forward takes a cache (``cache`` from transformers 5.2x on)."""
    return "cache" if "cache" in inspect.signature(model.original_model.forward).parameters else "past_key_values"


@contextmanager
def _cache_reaches_attention(model: HookedModel) -> Iterator[None]:
    """While the block runs, every bridge attention module also sees a ``cache=`` argument as
    ``past_key_values=``, the name it reads (see the module docstring)."""

    def both_names(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs

    handles = [block.attn.register_forward_pre_hook(both_names, with_kwargs=True) for block in model.blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
