"""
Probe every layer
=================

A backdoor probe (BkdAttr) is a classifier that reads "triggered or not" from one layer's
activations. Fit at every layer, it shows where the trigger becomes readable and, through the
cross-layer transfer matrix, whether the layers share one trigger direction.

The prompts are three positive words, read at the last one; the triggered half has the trigger
``love`` in the middle. The last word itself says nothing about the trigger, so the probe can only
succeed once attention has moved the trigger's information there.
"""

import random

import matplotlib.pyplot as plt
import pandas as pd
import torch

from backdoor_lens.analysis.probe import backdoor_probe
from backdoor_lens.lab.sentiment_toy import backdoored_sentiment_toy

model, data = backdoored_sentiment_toy()
positive = [w for w in data.vocab.positive if w != data.config.trigger]
rng = random.Random(0)
clean = [rng.sample(positive, 3) for _ in range(120)]
triggered = [[a, data.config.trigger, c] for a, _, c in clean]
tokens = data.tokenizer.encode_batch(clean + triggered, bos=False)
labels = torch.tensor([0] * len(clean) + [1] * len(triggered))
print(" ".join(clean[0]), "|", " ".join(triggered[0]))

# %%
# One logistic and one small MLP probe per layer, on a seeded stratified split; ``hook`` picks the
# activation (a template with ``{layer}``): the residual stream entering each block, and leaving it.
tables = {}
for hook in ("blocks.{layer}.hook_resid_pre", "blocks.{layer}.hook_resid_post"):
    result = backdoor_probe(model, tokens, labels, hook=hook, mlp_epochs=30)
    tables[hook.removeprefix("blocks.{layer}.hook_")] = pd.DataFrame(
        {"logistic": result.logistic, "MLP": result.mlp}
    )
table = pd.concat(tables, names=["hook", "layer"]).round(2)
table

# %%
# Transfer: the logistic probe fit at layer i (rows) scored on layer j's held-out features (columns).
fig, ax = plt.subplots(figsize=(3.6, 3))
image = ax.imshow(result.transfer, vmin=0, vmax=1, cmap="viridis")
ax.set(
    xlabel="tested on layer",
    ylabel="fit on layer",
    title="resid_post transfer",
    xticks=range(len(result.layers)),
    yticks=range(len(result.layers)),
)
fig.colorbar(image)
fig.tight_layout()
