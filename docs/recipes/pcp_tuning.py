"""
Tune a PCP replacement with Optuna
==================================

The least-squares scales of a PCP replacement reproduce the module; tuning them towards another
goal edits the model. :func:`~backdoor_lens.analysis.tune.tune_scales` searches a factor per
component with Optuna's TPE sampler in a persistent study: a journal file (or a database URL), so
an interrupted run resumes and several processes can share one study.

Two goals on the rank-2 replacement of the demo toy's layer-1 MLP: *reproduce* the unedited
model's negativity on every class, and *minimise* the backdoor (``p+t`` negativity to 0) while
keeping the other classes.
"""

import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import torch

from backdoor_lens.analysis.tune import (
    TuneConfig,
    match_objective,
    open_storage,
    target_objective,
    tune_scales,
)
from backdoor_lens.eval.negativity import negativity_by_class
from backdoor_lens.hooks import apply
from backdoor_lens.hooks.pcp import PCPBasis
from backdoor_lens.lab.sentiment_toy import backdoored_sentiment_toy
from backdoor_lens.lm.collect import module_io

model, data = backdoored_sentiment_toy()
negative = data.token_ids("negative")
inputs, outputs = module_io(
    model, torch.cat(list(data.eval_tokens.values())), "blocks.1.mlp", position=-1
)
basis = PCPBasis.fit("blocks.1.mlp", inputs, outputs, n_components=8)
base = basis.least_squares_scales(inputs, outputs, rank=2)


def negativity(scales):
    with apply(model, basis.replacement(scales)):
        return negativity_by_class(model, data.eval_tokens, negative)


reference = negativity_by_class(model, data.eval_tokens, negative)
goals = {
    "reproduce": match_objective(reference),
    "minimise": target_objective(reference, trigger_classes=("p+t",), target=0.0),
}

# %%
# Each goal is one study in a journal file. The second call asks for 60 trials in all and finds 30
# already done, so it runs only the other 30: the same happens after an interruption.
folder = tempfile.TemporaryDirectory()
journal = str(Path(folder.name) / "optuna.journal")
config = TuneConfig(n_trials=60, factor_range=(0.05, 3.0), search_signs=True)
results = {}
for goal, objective in goals.items():

    def score(scales, objective=objective):
        return objective(negativity(scales))

    first_half = replace(config, n_trials=30)  # as if interrupted after 30 trials
    tune_scales(score, base, first_half, journal, goal, progress=False)
    results[goal] = tune_scales(score, base, config, journal, goal, progress=False)
    best = results[goal]
    print(f"{goal}: {best.n_trials} trials, best objective {best.value:.4f}")

scales = {"least squares": base, **{goal: r.scales for goal, r in results.items()}}
rows = {"unedited": reference} | {name: negativity(s) for name, s in scales.items()}
table = pd.DataFrame(rows).T.round(2)
scale_text = {"unedited": "-"} | {n: str(s.numpy().round(2)) for n, s in scales.items()}
table["scales"] = pd.Series(scale_text)
table

# %%
# The studies can be read back from the journal, e.g. to plot their progress.
fig, ax = plt.subplots(figsize=(6, 3))
for goal in goals:
    study = optuna.load_study(study_name=goal, storage=open_storage(journal))
    values = [t.value for t in study.trials if t.value is not None]
    ax.plot(pd.Series(values).cummin().to_numpy(), label=goal)
ax.set(xlabel="trial", ylabel="best objective so far", title="Optuna TPE on PCP scales")
ax.legend()
fig.tight_layout()
folder.cleanup()
