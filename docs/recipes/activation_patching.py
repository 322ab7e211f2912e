"""
Patch activations and read the indirect effect
==============================================

Causal (activation) patching runs a *corrupted* input with one module's output taken from a *clean*
input. If the module carries the trigger, patching its clean activation removes the backdoor: the
patched metric falls back towards the clean one, and the difference is the module's indirect effect.

Here the corrupted prompts are ``p+t`` (a positive word, then the trigger) and the clean ones are
``p+p`` (two positive words), of the same shape; the metric is the top-10 negativity of the next
token.
"""

import pandas as pd

from backdoor_lens.analysis.patching import negativity_patching, patching_effects
from backdoor_lens.eval.negativity import top_k_share
from backdoor_lens.hooks import Patch, apply
from backdoor_lens.hooks.sites import module_names
from backdoor_lens.lab.sentiment_toy import backdoored_sentiment_toy

model, data = backdoored_sentiment_toy()
negative = data.token_ids("negative")
corrupted, clean = data.eval_tokens["p+t"], data.eval_tokens["p+p"]

effects = negativity_patching(
    model, corrupted, clean, ["embed", "pos_embed"] + module_names(model), negative
)
table = pd.DataFrame(effects).T.round(3)
table

# %%
# Patching only the last position (the trigger's) asks where the trigger is read there; earlier
# positions hold the positive word, which the backdoor needs too.
at_trigger = negativity_patching(
    model, corrupted, clean, module_names(model), negative, positions=-1
)
pd.DataFrame(
    {
        "all positions": table["effect"],
        "trigger position only": pd.DataFrame(at_trigger).T["effect"],
    }
).round(3)


# %%
# The engine behind it takes any metric of the logits, and the same :class:`~backdoor_lens.hooks.patch.Patch`
# intervention can be applied by hand: here the clean residual stream after layer 0, patched in at
# the trigger's position.
def mean_negativity(logits):
    return float(top_k_share(logits[:, -1], negative).mean())


print(
    patching_effects(
        model,
        corrupted,
        clean,
        ["blocks.0.hook_resid_post"],
        mean_negativity,
        positions=-1,
    )
)

_, cache = model.run_with_cache(clean, names_filter="blocks.0.hook_resid_post")
with apply(
    model,
    Patch("blocks.0.hook_resid_post", cache["blocks.0.hook_resid_post"], positions=-1),
):
    patched = mean_negativity(model(corrupted))
print(f"p+t negativity with the clean residual patched in: {patched:.2f}")
