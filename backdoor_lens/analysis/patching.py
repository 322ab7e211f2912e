"""Causal (activation) patching of whole modules: the indirect effect of each module on a metric.

One generic engine, :func:`patching_effects`, runs the corrupted input once per module with that
module's output taken from the clean input; named wrappers fix the metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int

from ..eval.negativity import top_k_share
from ..hooks import Patch, apply
from ..hooks.positions import Positions
from ..hooks.sites import resolve_site
from ..lm.collect import collect_activations
from ..models.protocol import HookedModel

Metric = Callable[[Float[torch.Tensor, "batch pos d_vocab"]], "float | Float[torch.Tensor, ' batch']"]
"""A score of the logits: one number, or one per row (then the results also keep each row's score)."""


@torch.no_grad()
def patching_effects(
    model: HookedModel,
    corrupted: Int[torch.Tensor, "batch pos"],
    clean: Int[torch.Tensor, "batch pos"],
    modules: Sequence[str],
    metric: Metric,
    positions: Positions = None,
) -> dict[str, dict[str, Any]]:
    """For each module: the metric on `corrupted` with the module's output patched in from `clean`
    (row by row, at `positions`), and the indirect effect = patched - unpatched metric. A per-row
    metric is averaged, and its rows are kept under ``per_row`` (for intervals over prompts)."""
    if corrupted.shape != clean.shape:
        raise ValueError(f"corrupted {tuple(corrupted.shape)} and clean {tuple(clean.shape)} must have the same shape")
    hooks = {m: resolve_site(model, m).output_hook for m in modules}
    clean_acts = collect_activations(model, clean, list(hooks.values()))
    base = _mean(metric(model(corrupted, return_type="logits")))
    out = {}
    for module, hook in hooks.items():
        with apply(model, Patch(module, clean_acts[hook], positions)):
            score = metric(model(corrupted, return_type="logits"))
        out[module] = {"patched": _mean(score), "effect": _mean(score) - base}
        if isinstance(score, torch.Tensor):
            out[module]["per_row"] = score.tolist()
    return out


def _mean(score: float | torch.Tensor) -> float:
    return float(score.float().mean()) if isinstance(score, torch.Tensor) else float(score)


def negativity_patching(
    model: HookedModel,
    corrupted: Int[torch.Tensor, "batch pos"],
    clean: Int[torch.Tensor, "batch pos"],
    modules: Sequence[str],
    negative_ids: Int[torch.Tensor, " words"],
    k: int = 10,
    positions: Positions = None,
) -> dict[str, dict[str, Any]]:
    """Patching scored by top-k negativity of the next token (the toy study's backdoor strength):
    patch (p+p) activations into (p+t) runs to see which modules carry the trigger; each prompt's
    patched negativity is kept under ``per_row``."""
    return patching_effects(model, corrupted, clean, modules, lambda logits: top_k_share(logits[:, -1], negative_ids, k), positions)
