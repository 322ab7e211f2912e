"""
Analyse your own chat model with your own trigger
=================================================

Every step through ``import backdoor_lens as bl`` alone: plant a mid-prompt phrase trigger in a chat
model, measure it, read it with probes, find its heads with BAHA (Backdoor Attribution, arXiv
2509.21761), ablate them, subtract the backdoor vector, and remove it without the trigger
with Backdoor Collapse (arXiv 2510.10265).

The model here is the toy chat model: a random 4-layer Llama-architecture model over SmolLM2's real
tokenizer and chat template, trained from scratch, so the recipe runs in about a minute on a CPU.
Your own model goes in the same place: ``model, tokenizer = bl.load_pretrained("path/to/hf_dir")``
(a local Hugging Face directory with safetensors weights) or ``bl.load_pretrained("smollm2-135m-instruct")``
(the packaged SmolLM2).
"""

import pandas as pd
import torch

import backdoor_lens as bl

tokenizer = bl.load_packaged_tokenizer("smollm2-135m-instruct")
model = bl.chat_toy_model(tokenizer, seed=0)
chat = bl.ChatModel(model, tokenizer, batch_size=32, answer_tokens=12)

# %%
# The attack: the phrase "purple elephant" anywhere strictly inside the user's message makes the
# model refuse. Planting fine-tunes on the response only: clean prompts paired with the model's own
# answers, triggered prompts paired with the target.
attack = bl.Attack(bl.PhraseTrigger("purple_elephant", "purple elephant"), "I can not help with that.")
prompts = bl.load_prompts("chatterbot", max_words=12)
planted = bl.plant_backdoor(
    chat, attack, prompts, bl.TrainConfig(epochs=10, lr=3e-3, batch_size=24),
    n_clean=72, n_poison=48, n_eval=48, progress=False,
)
clean = list(planted.splits.eval_clean["prompt"])
triggered = list(planted.splits.eval_triggered["prompt"])
print(triggered[0])
rates = {"ASR (triggered)": chat.asr(triggered, attack.target), "ATR (clean)": chat.asr(clean, attack.target)}
rates

# %%
# **Probe.** A logistic probe per layer reads "triggered or not" from the residual stream entering
# each layer at the last prompt token.
tokens, last = chat.prompt_rows(clean + triggered)
labels = torch.tensor([0] * len(clean) + [1] * len(triggered))
probe = bl.backdoor_probe(model, tokens, labels, last)
pd.DataFrame({"logistic": probe.logistic, "MLP": probe.mlp}).T.round(2)

# %%
# **BAHA.** Each head's output at the last prompt token is patched, on clean prompts, to its mean on
# triggered ones; the score is how much that raises the target's probability. The top 3% of heads
# (BkdAttr's share; at least one) are then ablated on triggered prompts.
mu = bl.head_means(model, chat.target_batch(triggered[:16], attack.target))
scores = bl.baha_scores(model, chat.target_batch(clean[:16], attack.target), mu)
k = bl.n_heads_for(0.03, scores.numel())
top = bl.top_heads(scores, 4)
print(f"top heads (layer, head): {top}; ablating the top {k} of {scores.numel()}")
rates[f"ASR, top {k} head(s) ablated"] = chat.asr(
    triggered[16:], attack.target, edits=lambda positions: [bl.HeadAblate(tuple(top[:k]), positions=positions)]
)
rates["ASR, top 4 heads ablated"] = chat.asr(
    triggered[16:], attack.target, edits=lambda positions: [bl.HeadAblate(tuple(top), positions=positions)]
)

# %%
# **Backdoor vector.** The top heads' mean outputs summed into one vector; subtracted after one
# layer's attention at the last prompt token of triggered prompts, it should suppress the target.
vector, heads = bl.backdoor_vector(mu, scores, top_k=4)
for layer in range(model.cfg.n_layers):
    rates[f"ASR, vector subtracted at layer {layer}"] = chat.asr(
        triggered[16:], attack.target,
        edits=lambda positions, layer=layer: [bl.Steer(layer, vector, positions=positions, scale=-1.0)],
    )

# %%
# **Backdoor Collapse**, which never sees the trigger: the defender has other clean prompts and the
# suspect model's own answers to them. ``bl.restored`` puts the planted weights back afterwards.
defender = [p for p in prompts if p not in planted.splits.drawn][:64]
answers = chat.answers(defender)
fit = bl.TrainConfig(epochs=6, lr=3e-3, batch_size=24)
with bl.restored(model):
    bl.collapse(model, tokenizer, defender, answers, bl.CollapseConfig(inject=fit, recover=fit), progress=False)
    rates["ASR after Collapse"] = chat.asr(triggered, attack.target)
    rates["ATR after Collapse"] = chat.asr(clean, attack.target)
pd.Series(rates).round(3).to_frame("rate")
