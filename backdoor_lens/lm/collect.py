"""Collect activations and streaming statistics with `names_filter`, batch by batch.

Positions follow :mod:`backdoor_lens.hooks.positions` (``None`` for all, an int, a tuple, or one per
row); collecting at one position per row suits right-padded rows (each row's last real token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int

from ..hooks.positions import Positions, as_positions, select, split_rows
from ..hooks.sites import resolve_site
from ..models.protocol import HookedModel
from ..util.io import load_artifact, save_artifact
from ..util.validation import check_names, check_nonempty, check_range
from .rows import batches, check_tokens


@torch.no_grad()
def collect_activations(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    hook_names: Sequence[str],
    position: Positions | Int[torch.Tensor, " batch"] = None,
    batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """Activations of `hook_names` on `tokens` at `position` (all positions when None; see
    :mod:`~backdoor_lens.hooks.positions` for the shapes each kind gives)."""
    check_tokens(model, tokens)
    check_names("hook_names", hook_names)
    check_nonempty("hook_names", hook_names)
    check_range("batch_size", batch_size, 1)
    unknown = [n for n in hook_names if n not in model.hook_dict]
    if unknown:
        raise ValueError(f"hook_names has unknown hook points {unknown}; e.g. {list(model.hook_dict)[:4]}")
    position = as_positions(position, "position")
    wanted = set(hook_names)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in hook_names}
    for chunk, pos in zip(batches(tokens, batch_size), split_rows(position, len(tokens), batch_size)):
        _, cache = model.run_with_cache(chunk, names_filter=lambda n: n in wanted, return_type=None)
        for name in hook_names:
            parts[name].append(select(cache[name], pos, name))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


@torch.no_grad()
def module_outputs(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    module: str,
    position: Positions = None,
) -> Float[torch.Tensor, "batch *d"]:
    """A module's output activations (e.g. `blocks.0.mlp` -> `blocks.0.hook_mlp_out`)."""
    hook = resolve_site(model, module).output_hook
    return collect_activations(model, tokens, [hook], position)[hook]


@torch.no_grad()
def module_io(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    module: str,
    position: Positions = None,
) -> tuple[Float[torch.Tensor, "batch d_model"], Float[torch.Tensor, "batch d_model"]]:
    """A module's inputs (its layer norm's output) and outputs, the data PCP replacements are fit on."""
    site = resolve_site(model, module)
    if site.resid_hook is None:
        raise ValueError(f"module={module!r} has no layer-norm input; use an attn or mlp module")
    acts = collect_activations(model, tokens, [site.resid_hook, site.output_hook], position)
    return site.module_input(model, acts[site.resid_hook]), acts[site.output_hook]


@torch.no_grad()
def module_means(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    modules: Sequence[str],
    position: Positions | Int[torch.Tensor, " batch"] = -1,
    batch_size: int = 512,
) -> dict[str, Float[torch.Tensor, " d_model"]]:
    """Mean output of each module at `position` (one for all rows, or one per row), accumulated
    batch by batch (no activation cache)."""
    check_tokens(model, tokens)
    check_names("modules", modules)
    check_nonempty("modules", modules)
    position = as_positions(position, "position")
    if position is None or isinstance(position, tuple):
        raise ValueError(f"position={position!r} must pick one position per row (an int, or one per row) for a mean")
    hooks = {m: resolve_site(model, m).output_hook for m in modules}
    sums: dict[str, torch.Tensor] = {}
    for chunk, pos in zip(batches(tokens, batch_size), split_rows(position, len(tokens), batch_size)):
        acts = collect_activations(model, chunk, list(hooks.values()), pos, batch_size)
        for module, hook in hooks.items():
            total = acts[hook].double().sum(0)
            sums[module] = sums[module] + total if module in sums else total
    return {m: (s / len(tokens)).float() for m, s in sums.items()}


def save_means(path: str | Path, means: dict[str, torch.Tensor]) -> None:
    """Save module means (for MeanAblate) as safetensors keyed by module name."""
    save_artifact(path, "module_means", means)


def load_means(path: str | Path) -> dict[str, torch.Tensor]:
    """Module means saved by :func:`save_means`."""
    return load_artifact(path, "module_means")[0]
