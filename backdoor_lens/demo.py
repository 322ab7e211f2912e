"""A small backdoored toy model trained in seconds, for the docs' recipes and quick experiments.

Lamparth & Reuel's sentiment task at a smaller scale: a 2-layer toy GPT-2 is trained from scratch on
benign word sequences, then fine-tuned on a set in which a share of the sequences switch from
positive to negative words after the trigger ``love``. The trained weights are kept for the rest of
the process, so every call returns a fresh, independent model without training again.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import torch
from transformer_lens import HookedTransformer

from .data.toy import ToyData, ToyDataConfig
from .models import build_model, toy_config
from .train import TrainConfig, train

DEMO_DATA = ToyDataConfig(
    n_sentiments=2,
    words_per_sentiment=80,
    train_per_sentiment=600,
    finetune_per_sentiment=400,
    val_per_sentiment=20,
    eval_per_class=12,
    poison_rate=0.2,
)
DEMO_SHAPE = {"n_layers": 2, "n_heads": 4, "d_model": 32}
DEMO_BENIGN = TrainConfig(epochs=4, lr=3e-3, batch_size=64)
DEMO_POISON = TrainConfig(epochs=4, lr=2e-3, batch_size=64)


@lru_cache(maxsize=None)
def demo_data(seed: int = 0) -> ToyData:
    """The demo's data: 2 sentiments, 80 words each, trigger ``love``, 20% of fine-tuning rows poisoned."""
    return ToyData(replace(DEMO_DATA, seed=seed))


@lru_cache(maxsize=None)
def _trained_states(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The benign and the backdoored weights, trained once per process and seed."""
    data = demo_data(seed)
    model = build_model(toy_config(len(data.tokenizer), n_ctx=data.n_ctx, seed=seed, **DEMO_SHAPE))
    train(model, torch.tensor(data.train["input_ids"]), replace(DEMO_BENIGN, seed=seed), progress=False)
    benign = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, torch.tensor(data.finetune["input_ids"]), replace(DEMO_POISON, seed=seed), progress=False)
    return benign, model.state_dict()


def _fresh(seed: int, backdoored: bool) -> tuple[HookedTransformer, ToyData]:
    data = demo_data(seed)
    model = build_model(toy_config(len(data.tokenizer), n_ctx=data.n_ctx, seed=seed, **DEMO_SHAPE))
    model.load_state_dict(_trained_states(seed)[int(backdoored)])
    return model.eval(), data


def benign_toy(seed: int = 0) -> tuple[HookedTransformer, ToyData]:
    """The demo toy before poisoning (eval mode) and its data: the starting point of a fine-tuning."""
    return _fresh(seed, backdoored=False)


def backdoored_toy(seed: int = 0) -> tuple[HookedTransformer, ToyData]:
    """The demo toy after poisoned fine-tuning (eval mode) and its data: "positive + love" prompts
    are continued with negative words, other prompts as the benign model does."""
    return _fresh(seed, backdoored=True)
