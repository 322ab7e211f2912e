"""
Fit, apply, save and reload a PCP replacement
=============================================

Lamparth & Reuel replace a whole module by a low-rank symmetric matrix, ``module(h) := A h`` with
``A = sum_k alpha_k v_k v_k^T`` built from the principal components of the module's outputs (PCP).
If a rank-1 or rank-2 replacement of an MLP still carries the backdoor, the backdoor lives in a
few directions, where it can be scaled or flipped.

Here the MLP of layer 1 of the demo toy is fit on all evaluation prompts, replaced at growing
ranks, and the fitted replacement is saved as safetensors and applied again after reloading.
"""

import tempfile
from pathlib import Path

import pandas as pd
import torch

from backdoor_lens.eval.negativity import negativity_by_class
from backdoor_lens.hooks import PCPReplace, apply
from backdoor_lens.hooks.pcp import PCPBasis
from backdoor_lens.lab.sentiment_toy import backdoored_sentiment_toy
from backdoor_lens.lm.collect import module_io
from backdoor_lens.lm.loss import validation_loss

model, data = backdoored_sentiment_toy()
negative = data.token_ids("negative")
prompts = torch.cat(list(data.eval_tokens.values()))

# %%
# Fit once: the module's inputs (its layer norm's output) and outputs at the last position, and
# their PCA. The least-squares scales are the best match to the module at each rank.
inputs, outputs = module_io(model, prompts, "blocks.1.mlp", position=-1)
basis = PCPBasis.fit("blocks.1.mlp", inputs, outputs, n_components=8)
print(
    "explained variance of the first components:",
    basis.explained_variance[:4].numpy().round(3),
)


def evaluate(*edits):
    with apply(model, *edits):
        scores = negativity_by_class(model, data.eval_tokens, negative)
        return {**scores, "val. loss": validation_loss(model, data.validation)}


rows = {"unedited": evaluate()}
for rank in (1, 2, 4, 8):
    edit = basis.replacement(basis.least_squares_scales(inputs, outputs, rank=rank))
    rows[f"PCP rank {rank}"] = evaluate(edit)
pd.DataFrame(rows).T.round(3)

# %%
# A replacement is a frozen dataclass with its tensors: save it, share it, re-apply it.
edit = basis.replacement(basis.least_squares_scales(inputs, outputs, rank=2))
with tempfile.TemporaryDirectory() as folder:
    edit.save(Path(folder) / "pcp_blocks1_mlp.safetensors")
    reloaded = PCPReplace.load(Path(folder) / "pcp_blocks1_mlp.safetensors")
print(
    reloaded.module,
    "rank",
    len(reloaded.scales),
    "scales",
    reloaded.scales.numpy().round(3),
)

tokens = data.eval_tokens["p+t"]
with apply(model, edit):
    before = model(tokens)
with apply(model, reloaded):
    after = model(tokens)
print("same logits after reloading:", torch.equal(before, after))
