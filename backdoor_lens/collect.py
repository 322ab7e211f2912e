"""Collect activations and streaming statistics with `names_filter`, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from pathlib import Path

from .io import load_artifact, save_artifact
from .sites import resolve_site
from .validation import check_nonempty


def batches(tokens: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive row slices of `tokens` of at most `batch_size` rows."""
    for start in range(0, len(tokens), batch_size):
        yield tokens[start : start + batch_size]


Position = int | Int[torch.Tensor, " batch"] | None
"""One position for every row, one per row (a 1-D tensor), or all positions (None)."""


def _position_chunks(position: Position, n_rows: int, batch_size: int) -> list:
    """`position` cut to follow `batches(tokens, batch_size)` (per-row positions are sliced)."""
    if isinstance(position, torch.Tensor):
        if position.shape != (n_rows,):
            raise ValueError(f"position has shape {tuple(position.shape)}; per-row positions need shape ({n_rows},)")
        return list(batches(position, batch_size))
    return [position] * -(-n_rows // batch_size)


def _at(act: torch.Tensor, position: Position) -> torch.Tensor:
    if position is None:
        return act
    if isinstance(position, torch.Tensor):
        return act[torch.arange(len(act), device=act.device), position.to(act.device)]
    return act[:, position]


@torch.no_grad()
def collect_activations(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    hook_names: Sequence[str],
    position: Position = None,
    batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """Activations of `hook_names` on `tokens`, at one `position`, at one position per row (rows
    right-padded, e.g. each row's last real token), or at all positions (None)."""
    check_nonempty("tokens", tokens)
    unknown = [n for n in hook_names if n not in model.hook_dict]
    if unknown:
        raise ValueError(f"hook_names has unknown hook points {unknown}; e.g. {list(model.hook_dict)[:4]}")
    wanted = set(hook_names)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in hook_names}
    for chunk, pos in zip(batches(tokens, batch_size), _position_chunks(position, len(tokens), batch_size)):
        _, cache = model.run_with_cache(chunk, names_filter=lambda n: n in wanted, return_type=None)
        for name in hook_names:
            parts[name].append(_at(cache[name], pos))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


@torch.no_grad()
def module_outputs(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    module: str,
    position: int | None = None,
) -> Float[torch.Tensor, "batch *d"]:
    """A module's output activations (e.g. `blocks.0.mlp` -> `blocks.0.hook_mlp_out`)."""
    hook = resolve_site(model, module).output_hook
    return collect_activations(model, tokens, [hook], position)[hook]


@torch.no_grad()
def module_io(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    module: str,
    position: int | None = None,
) -> tuple[Float[torch.Tensor, "batch d_model"], Float[torch.Tensor, "batch d_model"]]:
    """A module's inputs (its layer norm's output) and outputs, the data PCP replacements are fit on."""
    site = resolve_site(model, module)
    if site.resid_hook is None:
        raise ValueError(f"module={module!r} has no layer-norm input; use an attn or mlp module")
    acts = collect_activations(model, tokens, [site.resid_hook, site.output_hook], position)
    return site.module_input(model, acts[site.resid_hook]), acts[site.output_hook]


@torch.no_grad()
def module_means(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    modules: Sequence[str],
    position: int | Int[torch.Tensor, " batch"] = -1,
    batch_size: int = 512,
) -> dict[str, Float[torch.Tensor, " d_model"]]:
    """Mean output of each module at `position` (one for all rows, or one per row), accumulated
    batch by batch (no activation cache)."""
    check_nonempty("tokens", tokens)
    check_nonempty("modules", modules)
    hooks = {m: resolve_site(model, m).output_hook for m in modules}
    sums: dict[str, torch.Tensor] = {}
    for chunk, pos in zip(batches(tokens, batch_size), _position_chunks(position, len(tokens), batch_size)):
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
