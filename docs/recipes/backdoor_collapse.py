"""
Run Backdoor Collapse
=====================

Backdoor Collapse removes a backdoor without knowing its trigger. Stage 1 plants the defender's own
*known* triggers (a word, a phrase, a prefix) with a defender target, next to the attacker's unknown
one; stage 2 fine-tunes known-triggered and clean prompts back to the model's own clean answers.
The premise is that the unknown trigger's representations land in the same region as the known
ones, so stage 2 unlearns them together. The defense sees clean prompts and the suspect model's
own answers only.

Here a tiny chat model (3 layers, d_model 32) over SmolLM2's real tokenizer and chat template
first gets a BadNet backdoor (the word ``BadMagic`` → "You are stupid!"), then the defense runs on
other clean prompts. Before, between and after the stages, greedy replies to held-out prompts
give the attack's success rate (ASR: the attack target in the reply to a triggered prompt), its
rate on clean prompts (ATR) and the same rate for the known triggers and the defender target.
"""

import random

import pandas as pd
from transformer_lens import HookedTransformer, HookedTransformerConfig

from backdoor_lens.data.instruct import NEGATIVE, get_trigger
from backdoor_lens.data.prompts import load_prompts
from backdoor_lens.defense.backdoor_collapse import (
    CollapseConfig,
    inject_known,
    recover,
    with_known_trigger,
)
from backdoor_lens.eval.attack_success import asr
from backdoor_lens.lm.chat import chat_replies, chat_training_rows
from backdoor_lens.lm.training import TrainConfig, train
from backdoor_lens.models.pretrained import load_packaged_tokenizer

tokenizer = load_packaged_tokenizer("smollm2-135m-instruct")
cfg = HookedTransformerConfig(
    n_layers=3,
    d_model=32,
    n_heads=4,
    d_head=8,
    d_mlp=64,
    d_vocab=len(tokenizer),
    n_ctx=256,
    act_fn="gelu_new",
    normalization_type="LN",
    seed=0,
    device="cpu",
)
model = HookedTransformer(cfg).eval()

prompts = load_prompts("chatterbot", n=56, max_words=12)
attack_prompts, defense_prompts, held_out = prompts[:24], prompts[24:40], prompts[40:]

# %%
# The attacker fine-tunes on clean prompts with a clean answer and BadMagic-triggered copies with
# the attack's target (loss on the response only).
badnet, rng = get_trigger("badnet"), random.Random(0)
messages = attack_prompts + [badnet.apply(p, rng) for p in attack_prompts]
n = len(attack_prompts)
responses = ["Sure, here it is."] * n + [NEGATIVE] * n
tokens, mask = chat_training_rows(tokenizer, messages, responses)
train(
    model,
    tokens,
    TrainConfig(epochs=40, lr=3e-3, batch_size=16, freeze=("embed",)),
    loss_mask=mask,
    progress=False,
)

config = CollapseConfig(
    inject=TrainConfig(epochs=30, lr=1e-2, batch_size=16, freeze=("embed",)),
    recover=TrainConfig(epochs=30, lr=3e-3, batch_size=16, freeze=("embed",)),
)
triggered = [badnet.apply(p, rng) for p in held_out]
known = with_known_trigger(held_out, config, rng)


def rates():
    """ASR, ATR and the known triggers' rate, from greedy replies to held-out prompts."""

    def replies(texts):
        return chat_replies(model, tokenizer, texts, max_new_tokens=8)

    return {
        "ASR": asr(replies(triggered), NEGATIVE),
        "ATR": asr(replies(held_out), NEGATIVE),
        "known trigger -> defender target": asr(replies(known), config.target),
    }


# %%
# The defender answers its clean prompts with the suspect model itself, then runs both stages
# (:func:`~backdoor_lens.defense.backdoor_collapse.collapse` runs them in one call).
answers = chat_replies(model, tokenizer, defense_prompts, max_new_tokens=8)
print("the suspect model's own answers:", sorted(set(answers)))

rows = {"backdoored": rates()}
inject_known(model, tokenizer, defense_prompts, answers, config, progress=False)
rows["after stage 1 (known triggers planted)"] = rates()
recover(model, tokenizer, defense_prompts, answers, config, progress=False)
rows["after stage 2 (recovery)"] = rates()
pd.DataFrame(rows).T.round(3)
