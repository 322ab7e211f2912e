"""Figures of the toy study: hidden-state PCA (the paper's Fig. 3), scaling sweep, freezing curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from ..common.report import estimate_of, save_figure

PURE = ("p+p", "n+n", "s+s")
COLOURS = {"p+p": "tab:green", "n+n": "tab:red", "s+s": "tab:gray", "p+n": "tab:olive", "n+p": "tab:brown",
           "p+t": "tab:blue", "s+t": "tab:purple"}


def hidden_state_pca(figures: dict[str, dict[str, Any]], path: Path) -> None:
    """Layer-1 hidden states at the second word in a 2-D PCA fitted on the pure pairs; trigger marked."""
    fig, axes = plt.subplots(1, len(figures), figsize=(6 * len(figures), 5), squeeze=False)
    for ax, (name, fig_data) in zip(axes[0], figures.items()):
        states: dict[str, torch.Tensor] = fig_data["hidden"]
        pure = torch.cat([states[c] for c in PURE if c in states]).double()
        mean = pure.mean(0)
        basis = torch.linalg.svd(pure - mean, full_matrices=False).Vh[:2]
        for cls, x in states.items():
            xy = (x.double() - mean) @ basis.T
            trigger = cls.endswith("+t")
            ax.scatter(xy[:, 0], xy[:, 1], s=40 if trigger else 14, marker="x" if trigger else "o",
                       c=COLOURS.get(cls, "black"), label=cls, alpha=0.8)
        ax.set_title(f"{name}: layer-1 hidden states (trigger '{fig_data['trigger']}' marked x)")
        ax.set_xlabel("PC 1 (fit on pure pairs)")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def scaling_sweep(models: dict[str, dict[str, Any]], path: Path) -> None:
    """Trigger negativity (mean and 95% band) and validation loss as the first PCP scaling factor varies (Table V)."""
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    fig.subplots_adjust(wspace=0.45)
    for ax, (name, m) in zip(axes[0], models.items()):
        sweep = m["scaling_sweep"]
        factors = [float(f) for f in sweep]
        for cls in ("p+t", "s+t", "n+n", "p+p"):
            if cls in next(iter(sweep.values())):
                points = [estimate_of(v[cls]) for v in sweep.values()]
                ax.plot(factors, [e.value for e in points], marker="o", label=cls, c=COLOURS[cls])
                ax.fill_between(factors, [e.low for e in points], [e.high for e in points], color=COLOURS[cls], alpha=0.15)
        ax.set_xlabel("relative factor on the first PCP scale (blocks.0.mlp)")
        ax.set_ylabel("top-10 negativity (95% band)")
        ax.set_title(f"{name}: scaling the PCP replacement")
        twin = ax.twinx()
        twin.plot(factors, [v["val_loss"] for v in sweep.values()], ls="--", c="black", label="val loss")
        twin.set_ylabel("validation loss (dashed)")
        ax.legend(fontsize=8, loc="center left")
    save_figure(fig, path)


def freezing_curves(freezing: dict[str, dict[str, Any]], path: Path) -> None:
    """Trigger negativity during poisoned fine-tuning with different modules frozen."""
    fig, axes = plt.subplots(1, len(freezing), figsize=(6 * len(freezing), 4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], freezing.items()):
        for label, run in runs.items():
            ax.plot([r["step"] for r in run["curve"]], [r["p+t"] for r in run["curve"]], label=label)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("p+t top-10 negativity")
        ax.set_title(f"{name}: backdoor emergence with frozen modules")
        ax.legend(fontsize=7)
    save_figure(fig, path)
