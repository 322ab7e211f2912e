"""
BAHA: exact versus attribution patching
=======================================

Backdoor Attention Head Attribution (BAHA, from BkdAttr) scores each attention head by its causal
indirect effect: on clean prompts, set the head's output at the last prompt position to its mean
over triggered prompts and measure how much the probability of the backdoor's target rises.

Three routes compute the same ``[n_layers, n_heads]`` table: ``reference`` (one forward pass per
head), ``fast`` (exact, from one cached run plus a short resumed pass per layer) and
``attribution`` (attribution patching: one forward and one backward pass, a first-order estimate;
``grad_drop=True`` adds AtP*'s GradDrop).
"""

import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from scipy.stats import spearmanr

from backdoor_lens.analysis.baha import baha_scores, head_means, top_heads
from backdoor_lens.analysis.scoring import target_score
from backdoor_lens.lab.sentiment_toy import backdoored_sentiment_toy
from backdoor_lens.lm.rows import TargetBatch

model, data = backdoored_sentiment_toy()

# %%
# The target is the negative word the backdoored model most expects after ``p+t`` prompts; each
# row of a :class:`~backdoor_lens.lm.rows.TargetBatch` is a prompt followed by the target.
negative = data.token_ids("negative")
with torch.no_grad():
    probs = model(data.eval_tokens["p+t"])[:, -1].softmax(-1)
target = int(negative[probs[:, negative].mean(0).argmax()])
print("target word:", data.tokenizer.words[target])


def batch(cls):
    prompts = data.eval_tokens[cls].tolist()
    return TargetBatch.from_ids(
        prompts, [[target]] * len(prompts), pad_id=0, model=model
    )


clean, triggered = batch("p+p"), batch("p+t")
with torch.no_grad():
    print(
        f"P(target): clean {target_score(model(clean.tokens), clean).mean():.3f}, "
        f"triggered {target_score(model(triggered.tokens), triggered).mean():.3f}"
    )

# %%
# ``head_means`` gives each head's mean output on the triggered prompts; every method patches
# towards it.
mu = head_means(model, triggered)
methods = {
    "reference": {"method": "reference"},
    "fast": {"method": "fast"},
    "attribution": {"method": "attribution"},
    "attribution + GradDrop": {"method": "attribution", "grad_drop": True},
}
scores, seconds = {}, {}
for name, kwargs in methods.items():
    start = time.perf_counter()
    scores[name] = baha_scores(model, clean, mu, **kwargs)
    seconds[name] = time.perf_counter() - start

exact = scores["reference"].flatten()
comparison = {
    name: {
        "seconds": seconds[name],
        "max |difference| to reference": float((s.flatten() - exact).abs().max()),
        "Spearman with reference": spearmanr(exact, s.flatten()).statistic,
        "top-3 heads": ", ".join(f"L{layer}H{head}" for layer, head in top_heads(s, 3)),
    }
    for name, s in scores.items()
}
pd.DataFrame.from_dict(comparison, orient="index").round(4)

# %%
# Exact against estimated effect per head: attribution patching is a linear approximation, so it
# ranks heads well when the patched effect is small and can misjudge the largest ones.
fig, ax = plt.subplots(figsize=(4.5, 3.5))
for name in ("attribution", "attribution + GradDrop"):
    ax.scatter(exact, scores[name].flatten(), label=name, alpha=0.8)
ax.axline((0, 0), slope=1, color="grey", lw=0.8)
ax.set(xlabel="exact CIE (reference)", ylabel="estimated CIE", title="BAHA per head")
ax.legend()
fig.tight_layout()
