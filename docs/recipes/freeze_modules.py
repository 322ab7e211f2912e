"""
Freeze modules during fine-tuning
=================================

Lamparth & Reuel ask which modules a backdoor needs to be *learned*: freeze a set of modules
during poisoned fine-tuning and see whether the backdoor still appears. :func:`~backdoor_lens.lm.training.train`
takes the modules to freeze in its :class:`~backdoor_lens.lm.training.TrainConfig`; the
:class:`~backdoor_lens.lm.training.Freeze` context manager does the same around any training loop.

Each run starts from the demo toy *before* poisoning and fine-tunes it on the poisoned set, with
the ``p+t`` and ``p+p`` negativity recorded every 10 steps.
"""

from dataclasses import replace

import pandas as pd
import torch

from backdoor_lens.eval.negativity import negativity_by_class
from backdoor_lens.lab.sentiment_toy import DEMO_POISON, benign_sentiment_toy
from backdoor_lens.lm.loss import validation_loss
from backdoor_lens.lm.training import freezable_modules, train

model, data = benign_sentiment_toy()
negative = data.token_ids("negative")
poisoned = torch.tensor(data.finetune["input_ids"])
watched = {c: data.eval_tokens[c] for c in ("p+p", "p+t")}
print(f"{len(poisoned)} fine-tuning rows, {sum(data.finetune['poisoned'])} poisoned")
print("freezable:", freezable_modules(model)[:8], "...")

# %%
freeze_sets = {
    "nothing": (),
    "embeddings": ("embed", "pos_embed"),
    "layer-0 attention": ("blocks.0.attn",),
    "both MLPs": ("blocks.0.mlp", "blocks.1.mlp"),
}
histories, rows = {}, {}
for name, modules in freeze_sets.items():
    model, _ = benign_sentiment_toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = replace(DEMO_POISON, freeze=modules, eval_every=10)
    histories[name] = train(
        model,
        poisoned,
        config,
        evaluate=lambda m: negativity_by_class(m, watched, negative),
        progress=False,
    )
    changed = [
        k for k, v in model.state_dict().items() if not torch.equal(v, before[k])
    ]
    rows[name] = {
        **negativity_by_class(model, data.eval_tokens, negative),
        "val. loss": validation_loss(model, data.validation),
        "frozen weights unchanged": not any(k.startswith(modules) for k in changed),
    }
pd.DataFrame.from_dict(rows, orient="index").round(3)

# %%
# The backdoor's emergence during fine-tuning, per frozen set.
curves = pd.DataFrame(
    {name: pd.DataFrame(h).set_index("step")["p+t"] for name, h in histories.items()}
)
ax = curves.plot(
    marker=".", figsize=(6, 3.2), title="p+t negativity during poisoned fine-tuning"
)
ax.set(xlabel="optimiser step", ylabel="top-10 negativity")
ax.figure.tight_layout()
