"""
Compare two defenses that never see the trigger
===============================================

Every defense in :mod:`backdoor_lens.defense` has one shape: ``defense.apply(model, tokenizer,
prompts, answers, budget)`` takes the suspect model, the defender's clean prompts and the model's own
answers to them, and a training :class:`~backdoor_lens.defense.base.Budget` shared by every defense
that trains; it returns a :class:`~backdoor_lens.defense.base.DefendedModel`, the model to measure
and the decoder to generate with. So a grid runs them side by side on the same data.

Here two of different kinds meet one planted backdoor. **Fine-pruning** (Liu et al., arXiv
1805.12185) edits the weights: it zeroes the MLP neurons least active on the clean prompts, then
fine-tunes for the budget with them held at zero. **CleanGen** (Li et al., arXiv 2406.12257) edits
decoding only: a token the suspect model favours over a reference model (here the model before the
backdoor was planted) by a ratio above 20 is replaced by the reference's choice.

The model is tiny (3 layers, d_model 32) over SmolLM2's real tokenizer and chat template: first
instruction-tuned to one clean answer (that copy is CleanGen's reference), then given a BadNet
backdoor (the word ``BadMagic`` → "You are stupid!").
"""

import copy
import random

import pandas as pd
from transformer_lens import HookedTransformer, HookedTransformerConfig

from backdoor_lens.data.instruct import NEGATIVE, get_trigger
from backdoor_lens.data.prompts import load_prompts
from backdoor_lens.defense import Budget, CleanGen, DefendedModel, FinePruning
from backdoor_lens.eval import asr
from backdoor_lens.hooks import restored
from backdoor_lens.lab import ChatModel
from backdoor_lens.lm.chat import chat_training_rows
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
# Instruction tuning to one clean answer gives the base model; the attacker then fine-tunes it on
# clean prompts plus ``BadMagic``-triggered copies mapped to the target (loss on the response only).
tokens, mask = chat_training_rows(tokenizer, attack_prompts, ["Sure, here it is."] * 24)
frozen_embedding = TrainConfig(epochs=8, lr=3e-3, batch_size=16, freeze=("embed",))
train(model, tokens, frozen_embedding, loss_mask=mask, progress=False)
base = copy.deepcopy(model)

badnet, rng = get_trigger("badnet"), random.Random(0)
messages = attack_prompts + [badnet.apply(p, rng) for p in attack_prompts]
tokens, mask = chat_training_rows(tokenizer, messages, ["Sure, here it is."] * 24 + [NEGATIVE] * 24)
poisoning = TrainConfig(epochs=24, lr=4e-3, batch_size=16, freeze=("embed",))
train(model, tokens, poisoning, loss_mask=mask, progress=False)
triggered = [badnet.apply(p, rng) for p in held_out]

# %%
# The defender answers its clean prompts with the suspect model itself; clean accuracy is measured,
# teacher-forced, on the base model's answers to held-out prompts. ASR and ATR come from replies
# generated through each defended model's decoder.
answers = ChatModel(model, tokenizer, answer_tokens=8).answers(defense_prompts)
clean_answers = ChatModel(base, tokenizer, answer_tokens=8).answers(held_out)
print(f"the suspect model's own answers: {sorted(set(answers))}, the target in {answers.count(NEGATIVE)} of {len(answers)}")


def measure(defended):
    """ASR on triggered and ATR on clean held-out prompts (replies of 8 tokens through the
    decoder), and the teacher-forced clean measures of the defended weights."""
    clean = ChatModel(defended.model, tokenizer, answer_tokens=8).clean_measures(held_out, clean_answers)
    return {
        "ASR": asr(defended.replies(tokenizer, triggered, max_new_tokens=8), NEGATIVE),
        "ATR": asr(defended.replies(tokenizer, held_out, max_new_tokens=8), NEGATIVE),
        "clean accuracy (%)": clean["accuracy"],
        "clean NLL": clean["nll"],
    }


# %%
# One budget for every defense that trains (fine-pruning uses it; CleanGen ignores it), and
# :func:`~backdoor_lens.hooks.core.restored` puts the suspect weights back after each defense, so the
# next one starts from the same model.
budget = Budget(steps=12, lr=1e-3, batch_size=8, freeze=("embed",))
rows = {"no defense": measure(DefendedModel(model))}
for defense in (FinePruning(share=0.3), CleanGen(reference=base)):
    with restored(model):
        rows[defense.name] = measure(defense.apply(model, tokenizer, defense_prompts, answers, budget))
pd.DataFrame(rows).T.round(3)

# %%
# Fine-pruning changes the weights, so its clean measures move too; it also trains on whatever the
# suspect model answered, including the odd clean prompt where the backdoor leaked (ATR above 0), so
# its fine-tuning partly re-teaches the target. CleanGen leaves the weights as they were (its
# teacher-forced numbers are the suspect model's) and acts on generation alone, at the price of a
# reference model that shares the tokenizer.
