"""Build and backdoor your own sentiment toy in seconds: Lamparth & Reuel's task (arXiv 2302.12461,
section IV) at a smaller scale, with your trigger, target sentiment, shape and seed.

A toy GPT-2 is trained from scratch on benign word sequences, then fine-tuned on a set in which a
share of the sequences switch from positive words to the target sentiment's after the trigger. The
planting check (:func:`~backdoor_lens.lab.planting.check_planted`) then asks that triggered prompts
(p+t) lean to the target while benign ones do not, and warns (or raises) otherwise.

:func:`backdoored_sentiment_toy` and :func:`benign_sentiment_toy` are the docs' demo: trigger
``love``, 2 layers; their trained weights are kept for the rest of the process, so every call returns
a fresh, independent model without training again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch

from ..data.toy import ToyData, ToyDataConfig
from ..eval.negativity import negativity_by_class
from ..lm.training import TrainConfig, train
from ..models.protocol import HookedModel
from ..models.toy import build_model, sentiment_toy_config
from .planting import check_planted

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


@dataclass(frozen=True)
class SentimentToySpec:
    """Everything that makes a backdoored sentiment toy: the data (trigger, target sentiment, sizes),
    the model's shape, both trainings, the seed, and what the planting check asks of the result
    (target share on p+t at least `planted_at_least`, on p+p at most `benign_at_most`)."""

    data: ToyDataConfig = DEMO_DATA
    shape: dict[str, int] = field(default_factory=lambda: dict(DEMO_SHAPE))
    benign: TrainConfig = DEMO_BENIGN
    poison: TrainConfig = DEMO_POISON
    seed: int = 0
    planted_at_least: float = 0.5
    benign_at_most: float = 0.05


@dataclass
class SentimentToy:
    """A trained toy: the benign model, the backdoored model, their data, and each model's target
    share per evaluation class (what the planting check read)."""

    benign: HookedModel
    backdoored: HookedModel
    data: ToyData
    benign_rates: dict[str, float]
    backdoored_rates: dict[str, float]


def build_sentiment_toy(spec: SentimentToySpec = SentimentToySpec(), strict: bool = False, progress: bool = False) -> SentimentToy:
    """Train a benign toy, then backdoor a copy by poisoned fine-tuning, as `spec` says; run the
    planting check (warns, or raises with `strict`, when the backdoor did not take)."""
    data = ToyData(replace(spec.data, seed=spec.seed))
    model = build_model(sentiment_toy_config(len(data.tokenizer), n_ctx=data.n_ctx, seed=spec.seed, **spec.shape))
    train(model, torch.tensor(data.train["input_ids"]), replace(spec.benign, seed=spec.seed), desc="benign", progress=progress)
    benign = build_model(model.cfg)
    benign.load_state_dict(model.state_dict())
    train(model, torch.tensor(data.finetune["input_ids"]), replace(spec.poison, seed=spec.seed), desc="poison", progress=progress)
    rates = {name: negativity_by_class(m, data.eval_tokens, data.target_ids()) for name, m in (("benign", benign), ("backdoored", model))}
    check_planted(f"sentiment toy (trigger {spec.data.trigger!r}, seed {spec.seed})", rates["backdoored"],
                  at_least={"p+t": spec.planted_at_least}, at_most={"p+p": spec.benign_at_most}, strict=strict)
    return SentimentToy(benign.eval(), model.eval(), data, rates["benign"], rates["backdoored"])


@lru_cache(maxsize=None)
def _demo(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], ToyData]:
    """The demo's benign and backdoored weights and data, trained once per process and seed."""
    toy = build_sentiment_toy(SentimentToySpec(seed=seed))
    return toy.benign.state_dict(), toy.backdoored.state_dict(), toy.data


def demo_data(seed: int = 0) -> ToyData:
    """The demo's data: 2 sentiments, 80 words each, trigger ``love``, 20% of fine-tuning rows poisoned."""
    return _demo(seed)[2]


def _fresh(seed: int, backdoored: bool) -> tuple[HookedModel, ToyData]:
    benign, poisoned, data = _demo(seed)
    model = build_model(sentiment_toy_config(len(data.tokenizer), n_ctx=data.n_ctx, seed=seed, **DEMO_SHAPE))
    model.load_state_dict(poisoned if backdoored else benign)
    return model.eval(), data


def benign_sentiment_toy(seed: int = 0) -> tuple[HookedModel, ToyData]:
    """The demo toy before poisoning (eval mode) and its data: the starting point of a fine-tuning."""
    return _fresh(seed, backdoored=False)


def backdoored_sentiment_toy(seed: int = 0) -> tuple[HookedModel, ToyData]:
    """The demo toy after poisoned fine-tuning (eval mode) and its data: "positive + love" prompts
    are continued with negative words, other prompts as the benign model does."""
    return _fresh(seed, backdoored=True)
