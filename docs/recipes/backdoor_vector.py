"""
Build and apply a backdoor vector
=================================

BkdAttr's backdoor vector is the sum of the mean outputs, on triggered prompts, of the heads with
the highest BAHA scores. Added to the residual stream of clean prompts it should act like the
trigger; subtracted from triggered prompts it should suppress the backdoor.
:class:`~backdoor_lens.hooks.steer.Steer` adds ``scale * vector`` after one layer's attention, here at the
last prompt position only.
"""

import pandas as pd
import torch

from backdoor_lens.analysis.baha import backdoor_vector, baha_scores, head_means
from backdoor_lens.eval.negativity import negativity_by_class
from backdoor_lens.hooks import Steer, apply
from backdoor_lens.lab.sentiment_toy import backdoored_sentiment_toy
from backdoor_lens.lm.rows import TargetBatch

model, data = backdoored_sentiment_toy()
negative = data.token_ids("negative")

# %%
# Score the heads as in the BAHA recipe: clean ``p+p`` and triggered ``p+t`` prompts, each followed
# by the negative word the backdoor most expects.
with torch.no_grad():
    probs = model(data.eval_tokens["p+t"])[:, -1].softmax(-1)
target = int(negative[probs[:, negative].mean(0).argmax()])
clean, triggered = (
    TargetBatch.from_ids(
        data.eval_tokens[c].tolist(), [[target]] * len(data.eval_tokens[c]), pad_id=0
    )
    for c in ("p+p", "p+t")
)
mu = head_means(model, triggered)
vector, heads = backdoor_vector(mu, baha_scores(model, clean, mu), top_k=2)
print(f"backdoor vector from heads {heads}, norm {vector.norm():.2f}")

# %%
# Add the vector to clean prompts and subtract it from triggered ones, after each layer's
# attention, and read the negativity of every class.
rows = {"unedited": negativity_by_class(model, data.eval_tokens, negative)}
for layer in range(model.cfg.n_layers):
    for sign, scale in (("+", 1.0), ("-", -1.0)):
        with apply(model, Steer(layer, vector, positions=-1, scale=scale)):
            rows[f"layer {layer}, {sign}vector"] = negativity_by_class(
                model, data.eval_tokens, negative
            )
table = pd.DataFrame(rows).T.round(2)
table

# %%
# Compare ``p+p`` under "+vector" and ``p+t`` under "-vector" with the unedited row: where the
# vector carries the trigger, the first rises and the second falls. A scale sweep:
sweep = {}
for scale in (0.25, 0.5, 1.0, 2.0):
    with apply(model, Steer(0, vector, positions=-1, scale=scale)):
        sweep[scale] = negativity_by_class(
            model, {"p+p": data.eval_tokens["p+p"]}, negative
        )["p+p"]
ax = pd.Series(sweep).plot(
    marker="o", figsize=(4.5, 3), title="p+p negativity, vector added after layer 0"
)
ax.set(xlabel="scale", ylabel="top-10 negativity")
ax.figure.tight_layout()
