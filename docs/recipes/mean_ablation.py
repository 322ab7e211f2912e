"""
Mean-ablate a module
====================

Replace a module's output by its mean activation on trigger-free inputs and see which module the
backdoor needs. The model is a toy GPT-2 with a planted backdoor: after a positive word, the
trigger ``love`` makes it continue with negative words. The backdoor's strength is the share of
negative words among the top-10 next-token predictions ("negativity") for each class of two-word
prompts: ``p+t`` is a positive word then the trigger, ``p+p`` two positive words, and so on.
"""

import pandas as pd

from backdoor_lens.eval.negativity import negativity_by_class
from backdoor_lens.hooks import MeanAblate, apply
from backdoor_lens.hooks.sites import module_names
from backdoor_lens.lab.sentiment_toy import backdoored_sentiment_toy
from backdoor_lens.lm.collect import module_means

model, data = backdoored_sentiment_toy()
negative = data.token_ids("negative")
print("p+t prompts:", data.eval_words["p+t"][:3], "...")

# %%
# The means are taken at the last position of the ``p+p`` prompts, the trigger-free twins of
# ``p+t``; :class:`~backdoor_lens.hooks.ablate.MeanAblate` broadcasts a mean to every position (as
# Lamparth & Reuel do). ``apply`` removes the hooks when the ``with`` block ends.
modules = ["embed", "pos_embed"] + module_names(model)
means = module_means(model, data.eval_tokens["p+p"], modules, position=-1)

rows = {"unedited": negativity_by_class(model, data.eval_tokens, negative)}
for module in modules:
    with apply(model, MeanAblate(module, means[module])):
        rows[module] = negativity_by_class(model, data.eval_tokens, negative)
table = pd.DataFrame(rows).T.round(2)
table

# %%
# A module the backdoor runs through brings ``p+t`` down while the negative classes keep their
# negativity; ablating a module the whole task needs moves every class.
unedited = table.loc["unedited"]
drop = unedited["p+t"] - table["p+t"]
clean_shift = (table[["n+n", "p+n"]] - unedited[["n+n", "p+n"]]).abs().max(axis=1)
selective = (drop - clean_shift).drop("unedited").idxmax()
print(f"most selective: {selective}, p+t {unedited['p+t']:.2f} -> {table.loc[selective, 'p+t']:.2f}")

ax = table[["p+t", "n+n"]].plot.barh(
    figsize=(6, 3.5), title="negativity with one module mean-ablated"
)
ax.invert_yaxis()
ax.set_xlabel("top-10 negativity")
ax.figure.tight_layout()
