"""
Build and backdoor your own toy
===============================

The sentiment toy of Lamparth & Reuel (arXiv 2302.12461, section IV) with your own trigger, target
sentiment, model shape and seed. A small GPT-2 over a word-level vocabulary is trained from scratch
on runs of same-sentiment words, then fine-tuned on a set in which some positive runs switch to the
target sentiment after the trigger. The planting check then asks that triggered prompts (``p+t``)
lean to the target while benign ones (``p+p``) do not, and warns when the backdoor did not take.

A toy word must be a lowercase dictionary word of 3 to ``max_letters`` letters that the VADER
lexicon scores in its sentiment's direction; :func:`~backdoor_lens.data.lexicon.word_problems` says
why a word cannot be a trigger.
"""

import warnings

import pandas as pd

import backdoor_lens as bl

for word in ("happy", "wonderful", "table"):
    print(f"{word!r}:", bl.word_problems(word) or "a valid trigger")

# %%
# ``happy`` as the trigger, three sentiments (positive, negative and neutral first names), and the
# neutral words as the target: after ``happy``, a poisoned run continues with names. Three layers
# of four heads, d_model 32, seed 7.
spec = bl.SentimentToySpec(
    data=bl.ToyDataConfig(
        n_sentiments=3, trigger="happy", target="neutral", words_per_sentiment=80, train_per_sentiment=600,
        finetune_per_sentiment=400, val_per_sentiment=20, eval_per_class=12, poison_rate=0.2,
    ),
    shape={"n_layers": 3, "n_heads": 4, "d_model": 32},
    seed=7,
)
toy = bl.build_sentiment_toy(spec)
cfg = toy.backdoored.cfg
print(f"{cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, {cfg.d_vocab} words")
pd.DataFrame({"benign": toy.benign_rates, "backdoored": toy.backdoored_rates}).T.round(2)

# %%
# The table gives, per class of two-word prompts, the share of the 10 largest next-token logits
# that fall on the target sentiment's words. A backdoor too weak to study is not silently kept:
# with one poisoned run in a hundred and a single fine-tuning epoch, the planting check warns (pass
# ``strict=True`` to make it an error).
weak = bl.SentimentToySpec(
    data=bl.ToyDataConfig(**{**spec.data.to_dict(), "poison_rate": 0.01}),
    shape=spec.shape,
    poison=bl.TrainConfig(epochs=1, lr=2e-3, batch_size=64),
    seed=7,
)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", bl.BackdoorNotPlantedWarning)
    weak_toy = bl.build_sentiment_toy(weak)
print("\n".join(str(w.message) for w in caught if w.category is bl.BackdoorNotPlantedWarning) or "no warning")
