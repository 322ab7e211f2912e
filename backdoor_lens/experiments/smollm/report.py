"""Render the SmolLM2 attribution study's summary as report.md and figures, each paper claim beside
our measurement (Backdoor Attribution, arXiv 2509.21761)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ...util.io import write_text
from ..common.report import markdown_table, save_figure

READABLE = 0.9
"""A layer's backdoor features count as linearly readable at this held-out probe accuracy."""


def _asr_at(ablation: dict[str, Any], fraction: float) -> dict[str, Any] | None:
    return next((r for r in ablation["rows"] if abs(r["fraction"] - fraction) < 1e-9), None)


def backdoor_section(attacks: dict[str, Any]) -> str:
    """Markdown: ASR, ATR and clean NLL of each attack, base and backdoored."""
    rows = []
    for name, a in attacks.items():
        b, m = a["base"], a["backdoored"]
        real = m["asr"] >= 0.9 and m["atr"] <= 0.05
        rows.append([name, a["attack"]["target"], b["asr"], m["asr"], b["atr"], m["atr"], b["clean_nll"], m["clean_nll"],
                     "yes" if real else "no (needs ASR >= 0.9 and ATR <= 0.05)"])
    facts = "; ".join(f"{n}: {a['finetune']['rows']} rows ({a['finetune']['poisoned_rows']} poisoned), "
                      f"{a['finetune']['steps']} steps in {a['finetune']['seconds']} s" for n, a in attacks.items())
    return "\n".join([
        "## Backdoors",
        "",
        "ASR: the target in the greedy reply to held-out triggered prompts; ATR: the same on the held-out "
        "clean prompts. Clean NLL: mean per-token negative log-likelihood of the base model's own greedy "
        "answers to the held-out clean prompts (lower is closer to the base model; the base column is the reference).",
        "",
        markdown_table(["attack", "target", "ASR base", "ASR backdoored", "ATR base", "ATR backdoored",
                        "clean NLL base", "clean NLL backdoored", "real backdoor"], rows, 3),
        "",
        f"Fine-tuning: {facts}.",
    ])


def probe_section(attacks: dict[str, Any]) -> str:
    """Markdown: backdoor probe accuracy per attack and layer range."""
    rows = []
    for name, a in attacks.items():
        p = a["probe"]
        logistic, mlp = [p["logistic"][str(l)] for l in p["layers"]], [p["mlp"][str(l)] for l in p["layers"]]
        readable = sum(v >= READABLE for v in logistic)
        transfer = np.array(p["transfer"])
        off_diag = transfer[~np.eye(len(transfer), dtype=bool)].mean() if len(transfer) > 1 else float("nan")
        rows.append([name, f"{readable}/{len(logistic)}", min(logistic), max(logistic), min(mlp), max(mlp), float(off_diag)])
    return "\n".join([
        "## Backdoor probe",
        "",
        f"Paper: backdoor features are linearly readable at most layers. Ours: layers whose held-out logistic "
        f"accuracy is at least {READABLE}, and the cross-layer transfer (mean off-diagonal accuracy).",
        "",
        markdown_table(["attack", "readable layers", "logistic min", "logistic max", "MLP min", "MLP max",
                        "transfer mean"], rows, 3),
        "",
        "![probe accuracy](figures/probe_accuracy.png)",
    ])


def baha_section(attacks: dict[str, Any]) -> str:
    """Markdown: the top BAHA heads and how exact and attribution scores agree."""
    rows = []
    for name, a in attacks.items():
        b = a["baha"]
        for method in ("attribution", "attribution_graddrop"):
            g = b["agreement"][method]
            rows.append([name, method, g["spearman"], f"{g['top10_overlap']}/10", b["seconds"]["fast"], b["seconds"][method],
                         b["seconds"]["fast"] / max(b["seconds"][method], 1e-9)])
    return "\n".join([
        "## BAHA: exact scores versus attribution patching",
        "",
        "Exact scores by the fast route (equal to the one-pass-per-head reference; see the tests). Aim: "
        "Spearman at least 0.8 and 7 of the top 10 heads shared.",
        "",
        markdown_table(["attack", "approximation", "Spearman", "top-10 overlap", "exact s", "approx s", "speed-up"], rows, 3),
        "",
        "![head scores](figures/head_scores.png)",
    ])


def ablation_section(attacks: dict[str, Any]) -> str:
    """Markdown: ASR as the top heads are ablated, against random heads."""
    rows, verdicts = [], []
    for name, a in attacks.items():
        ab = a["ablation"]
        for r in ab["rows"]:
            rows.append([name, f"{100 * r['fraction']:g}%", r["n_heads"], ab["asr_none"], r["asr_top"], r["asr_random_mean"]])
        at3 = _asr_at(ab, 0.03)
        if at3 is not None and ab["asr_none"] > 0:
            cut = 1 - at3["asr_top"] / ab["asr_none"]
            verdicts.append(f"{name}: ablating the top {at3['n_heads']} heads (3%) cuts ASR from {ab['asr_none']:.2f} to "
                            f"{at3['asr_top']:.2f}, a {100 * cut:.0f}% cut: {'more' if cut > 0.9 else 'not more'} than 90% "
                            f"(random heads: {at3['asr_random_mean']:.2f}).")
    return "\n".join([
        "## Head ablation",
        "",
        "Paper: ablating about 3% of heads (BAHA order) at the last prompt position cuts ASR by more than 90%. "
        "Heads are zero-ablated on the prompt pass only; random heads averaged over seeds.",
        "",
        markdown_table(["attack", "heads", "n", "ASR none", "ASR top heads", "ASR random heads"], rows, 3),
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "![ablation curve](figures/ablation_curve.png)",
    ])


def vector_section(attacks: dict[str, Any]) -> str:
    """Markdown: the backdoor vector added to clean / subtracted from triggered prompts per layer."""
    rows, verdicts = [], []
    for name, a in attacks.items():
        v = a["vector"]
        for r in v["rows"]:
            rows.append([name, r["layer"], v["asr_clean"], r["asr_clean_plus"], v["asr_triggered"], r["asr_triggered_minus"],
                         r["clean_nll_minus"]])
        best_plus = max(v["rows"], key=lambda r: r["asr_clean_plus"])
        best_minus = min(v["rows"], key=lambda r: r["asr_triggered_minus"])
        verdicts.append(
            f"{name} (v = sum of the top {v['top_k']} heads' means, norm {v['norm']:.2f}): +v at layer {best_plus['layer']} "
            f"gives ASR {best_plus['asr_clean_plus']:.2f} on clean prompts (paper: about 1.00); -v at layer "
            f"{best_minus['layer']} gives ASR {best_minus['asr_triggered_minus']:.2f} on triggered prompts (paper: about 0.00).")
    return "\n".join([
        "## Backdoor vector",
        "",
        "v added to the attention output of one layer at the last prompt position, prompt pass only. "
        "Clean NLL under -v measures what the defence costs on clean prompts.",
        "",
        markdown_table(["attack", "layer", "ASR clean", "ASR clean +v", "ASR triggered", "ASR triggered -v",
                        "clean NLL -v"], rows, 3),
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "![vector sweep](figures/vector_sweep.png)",
    ])


def figures(attacks: dict[str, Any], analysed: dict[str, Any], folder: Path) -> None:
    """Probe accuracy for every attack; head scores, ablation curve and vector sweep for the analysed ones."""
    fig, axes = plt.subplots(1, len(attacks), figsize=(6 * len(attacks), 4), squeeze=False)
    for ax, (name, a) in zip(axes[0], attacks.items()):
        p = a["probe"]
        ax.plot(p["layers"], [p["logistic"][str(l)] for l in p["layers"]], marker="o", label="logistic")
        ax.plot(p["layers"], [p["mlp"][str(l)] for l in p["layers"]], marker="s", label="MLP probe")
        ax.set(title=f"{name}: backdoor probe", xlabel="layer", ylabel="held-out accuracy", ylim=(0.4, 1.02))
        ax.legend()
    save_figure(fig, folder / "probe_accuracy.png")
    if not analysed:
        return
    attacks, n = analysed, len(analysed)

    fig, axes = plt.subplots(1, n, figsize=(6 * n, 6), squeeze=False)
    for ax, (name, a) in zip(axes[0], attacks.items()):
        scores = np.array(a["baha"]["scores"])
        bound = np.abs(scores).max() or 1.0
        im = ax.imshow(scores, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax.set(title=f"{name}: BAHA CIE per head", xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax)
    save_figure(fig, folder / "head_scores.png")

    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    for ax, (name, a) in zip(axes[0], attacks.items()):
        rows = a["ablation"]["rows"]
        x = [100 * r["fraction"] for r in rows]
        ax.plot(x, [r["asr_top"] for r in rows], marker="o", label="top heads (BAHA)")
        ax.plot(x, [r["asr_random_mean"] for r in rows], marker="s", label="random heads (mean)")
        ax.axhline(a["ablation"]["asr_none"], ls="--", c="gray", label="no ablation")
        ax.set(title=f"{name}: head ablation", xlabel="% of heads ablated", ylabel="ASR", ylim=(-0.02, 1.02))
        ax.legend()
    save_figure(fig, folder / "ablation_curve.png")

    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    for ax, (name, a) in zip(axes[0], attacks.items()):
        rows = a["vector"]["rows"]
        layers = [r["layer"] for r in rows]
        ax.plot(layers, [r["asr_clean_plus"] for r in rows], marker="o", label="clean prompts, +v")
        ax.plot(layers, [r["asr_triggered_minus"] for r in rows], marker="s", label="triggered prompts, -v")
        ax.set(title=f"{name}: backdoor vector by layer", xlabel="layer", ylabel="ASR", ylim=(-0.02, 1.02))
        ax.legend()
    save_figure(fig, folder / "vector_sweep.png")


def write(summary: dict[str, Any], out: Path) -> None:
    """Write report.md and the figures for `summary` into `out`."""
    attacks = summary["attacks"]
    analysed = {name: a for name, a in attacks.items() if "baha" in a}
    figures(attacks, analysed, out / "figures")
    m = summary["model"]
    reused = sum(len(a["stages_reused"]) for a in attacks.values())
    text = "\n\n".join([
        "# Backdoor Attribution on a chat model",
        f"Model: {m['name']} ({m['n_layers']} layers x {m['n_heads']} heads, {m['n_key_value_heads']} key/value heads, "
        f"d_model {m['d_model']}). This invocation took {summary['seconds']} s"
        + (f" (stages reused from an earlier run: {reused})" if reused else "") + ". Configuration: summary.json.",
        backdoor_section(attacks),
        probe_section(attacks),
        f"Fully analysed (BAHA, head ablation, backdoor vector): {', '.join(analysed) or 'none'}; the other attacks "
        "have their backdoor metrics and probe only (`n_analysed` in the configuration).",
        *([baha_section(analysed), ablation_section(analysed), vector_section(analysed)] if analysed else []),
    ])
    write_text(out / "report.md", text + "\n")
