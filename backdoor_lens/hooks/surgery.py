"""Embedding surgery: give trigger tokens part of a donor token's embedding (Lamparth & Reuel, after
Kurita et al.'s embedding surgery), as a reversible weight edit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..models.protocol import HookedModel
from ..util.validation import check_nonempty, check_range


@dataclass(frozen=True)
class EmbeddingSurgery:
    """Replace a random `fraction` of the embedding dimensions of each token in `token_ids` by the
    donor token's values (the same dimensions for every trigger token; seeded)."""

    token_ids: tuple[int, ...]
    donor_id: int
    fraction: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        check_nonempty("token_ids", self.token_ids)
        check_range("fraction", self.fraction, 0.0, 1.0)

    def dimensions(self, d_model: int) -> torch.Tensor:
        """The seeded embedding dimensions replaced, out of `d_model`."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(d_model, generator=generator)[: round(self.fraction * d_model)]

    @contextmanager
    def applied(self, model: HookedModel) -> Iterator[HookedModel]:
        """The model with edited embedding rows inside the block; the original rows are restored after.

        Only the input embedding changes. Where the unembedding shares its weight (tied embeddings
        in a TransformerBridge over GPT-2 or SmolLM2; a HookedTransformer holds two copies), the
        embedding is a private edited copy while the block runs, so train nothing inside it."""
        W_E = model.embed.W_E
        for arg, ids in (("token_ids", self.token_ids), ("donor_id", (self.donor_id,))):
            bad = [i for i in ids if not 0 <= i < W_E.shape[0]]
            if bad:
                raise ValueError(f"{arg} has ids {bad} outside the vocabulary [0, {W_E.shape[0]})")
        rows = torch.tensor(self.token_ids, device=W_E.device)
        dims = self.dimensions(W_E.shape[1]).to(W_E.device)
        with _untied(model) as W_E:
            saved = W_E.data[rows].clone()
            try:
                with torch.no_grad():
                    W_E[rows[:, None], dims] = W_E[self.donor_id, dims]
                yield model
            finally:
                with torch.no_grad():
                    W_E[rows] = saved


@contextmanager
def _untied(model: HookedModel) -> Iterator[torch.nn.Parameter]:
    """The embedding weight, replaced by a copy for the block if the unembedding shares it."""
    W_E = model.embed.W_E
    if not any(p is W_E for p in model.unembed.parameters()):
        yield W_E
        return
    name = next(n for n, p in model.embed.named_parameters() if p is W_E)
    owner_path, _, attr = name.rpartition(".")
    owner = model.embed.get_submodule(owner_path) if owner_path else model.embed
    setattr(owner, attr, torch.nn.Parameter(W_E.detach().clone(), requires_grad=W_E.requires_grad))
    try:
        yield getattr(owner, attr)
    finally:
        setattr(owner, attr, W_E)


def trigger_token_ids(tokenizer: PreTrainedTokenizerBase, trigger: str) -> tuple[int, ...]:
    """The distinct token ids of `trigger` as it appears mid-sentence (with and without a leading space)."""
    ids = tokenizer(" " + trigger, add_special_tokens=False).input_ids + tokenizer(trigger, add_special_tokens=False).input_ids
    return tuple(dict.fromkeys(ids))


def single_token_id(tokenizer: PreTrainedTokenizerBase, word: str, arg: str = "word") -> int:
    """The id of `word` if it is one token; otherwise an error naming `arg`."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"{arg}={word!r} is {len(ids)} tokens for this tokenizer; choose a word that is a single token")
    return ids[0]
