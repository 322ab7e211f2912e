"""Render the SmolLM2 attribution study's summary as report.md and figures, each paper claim beside
our measurement (Backdoor Attribution, arXiv 2509.21761)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ...eval.intervals import Estimate, agreement_verdict, compare
from ...util.io import write_text
from ..common.report import (
    band,
    estimate_of,
    fmt,
    heads_share,
    markdown_table,
    pending_note,
    provenance_footer,
    save_figure,
    value,
)

READABLE = 0.9
"""A layer's backdoor features count as linearly readable at this held-out probe accuracy."""


def _asr_at(ablation: dict[str, Any], fraction: float) -> dict[str, Any] | None:
    return next((r for r in ablation["rows"] if abs(r["fraction"] - fraction) < 1e-9), None)


def backdoor_section(attacks: dict[str, Any]) -> str:
    """Markdown: ASR and ATR (substring and keyword) and the clean measure of each attack, base and backdoored."""
    rows = []
    for name, a in attacks.items():
        b, m = a["base"], a["backdoored"]
        rows.append([name, a["attack"]["target"], b["asr"], m["asr"], m["asr_keyword"], b["atr"], m["atr"], m["atr_keyword"],
                     b["clean_accuracy"], m["clean_accuracy"], planted_verdict(m)])
    facts = "; ".join(f"{n}: {a['finetune']['rows']} rows ({a['finetune']['poisoned_rows']} poisoned), "
                      f"{a['finetune']['steps']} steps in {fmt(a['finetune']['seconds'], 0)} s" for n, a in attacks.items())
    return "\n".join([
        "## Backdoors",
        "",
        "ASR: the target in the greedy reply (32 new tokens) to held-out triggered prompts, by exact substring and by "
        "keyword (refusal phrases for a refusal target, else all of the target's content words); ATR: the same on the "
        "held-out clean prompts. 95% intervals over prompts and seeds. Clean accuracy: the share of the base model's "
        "own generated answer tokens that the model ranks first, teacher-forced (100% for the base model itself).",
        "",
        markdown_table(["attack", "target", "ASR base", "ASR", "ASR keyword", "ATR base", "ATR", "ATR keyword",
                        "clean acc. base", "clean acc.", "planted"], rows, 2),
        "",
        f"Fine-tuning: {facts}.",
    ])


def planted_verdict(metrics: dict[str, Any]) -> str:
    """From the intervals: planted (ASR ≥ 0.9 and ATR ≤ 0.05), not planted, or inconclusive."""
    asr, atr = estimate_of(metrics["asr"]), estimate_of(metrics["atr"])
    if asr.low >= 0.9 and atr.high <= 0.05:
        return "planted"
    if asr.high < 0.9 or atr.low > 0.05:
        return "not as asked (ASR ≥ 0.9, ATR ≤ 0.05)"
    return "inconclusive"


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
            rows.append([name, method, g["spearman"], f"{g['top10_overlap']:.3g}/10", b["seconds"]["fast"], b["seconds"][method],
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
    """Markdown: ASR as the top heads are ablated, against random heads, with verdicts from the intervals."""
    rows, verdicts = [], []
    for name, a in attacks.items():
        ab = a["ablation"]
        for r in ab["rows"]:
            rows.append([name, heads_share(r["fraction"], r["n_heads"], r["total_heads"]), ab["none_asr"], r["top_asr"],
                         r["top_asr_keyword"], r["random_asr"]])
        at3 = _asr_at(ab, 0.03)
        if at3 is not None:
            before, after = estimate_of(ab["none_asr"]), estimate_of(at3["top_asr"])
            ninety = Estimate(0.1 * before.value, 0.1 * before.low, 0.1 * before.high, "scaled", before.n_seeds, before.n, ())
            cut = "no backdoor to test" if before.high < 0.5 else {
                "lower": "more than a 90% cut", "higher": "less than a 90% cut"}.get(compare(after, ninety), "inconclusive")
            verdicts.append(
                f"{name}: ablating the top {heads_share(0.03, at3['n_heads'], at3['total_heads'])} takes ASR from "
                f"{fmt(ab['none_asr'])} to {fmt(at3['top_asr'])} (keyword: {fmt(at3['top_asr_keyword'])}; random heads: "
                f"{fmt(at3['random_asr'])}): {cut} by the intervals (paper: more than 90%); against random heads the top "
                f"heads leave ASR {compare(after, estimate_of(at3['random_asr']))}.")
    return "\n".join([
        "## Head ablation",
        "",
        "Paper: ablating about 3% of heads (BAHA order) at the last prompt position cuts ASR by more than 90%. "
        "Heads are zero-ablated on the prompt pass only; random heads pooled over several draws.",
        "",
        markdown_table(["attack", "heads ablated", "ASR none", "ASR top heads", "ASR top heads (keyword)",
                        "ASR random heads"], rows, 2),
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
            rows.append([name, r["layer"], v["clean_asr"], r["clean_plus_asr"], v["triggered_asr"], r["triggered_minus_asr"],
                         r["triggered_minus_asr_keyword"], r["clean_nll_minus"]])
        best_plus = max(v["rows"], key=lambda r: value(r["clean_plus_asr"]))
        best_minus = min(v["rows"], key=lambda r: value(r["triggered_minus_asr"]))
        verdicts.append(
            f"{name} (v = the sum of the mean outputs of the top {heads_share(v['top_k'] / v['total_heads'], v['top_k'], v['total_heads'])}, "
            f"norm {fmt(v['norm'])}): +v at layer {best_plus['layer']} gives ASR {fmt(best_plus['clean_plus_asr'])} on clean "
            f"prompts (paper: about 1.00; {agreement_verdict(estimate_of(best_plus['clean_plus_asr']), 1.0)}); -v at layer "
            f"{best_minus['layer']} gives ASR {fmt(best_minus['triggered_minus_asr'])} on triggered prompts (paper: about "
            f"0.00; {agreement_verdict(estimate_of(best_minus['triggered_minus_asr']), 0.0)}). The best layers are picked "
            "on these same prompts, so these two numbers lean optimistic.")
    return "\n".join([
        "## Backdoor vector",
        "",
        "v added to the attention output of one layer at the last prompt position, prompt pass only. "
        "Clean NLL under -v measures what the defence costs on clean prompts.",
        "",
        markdown_table(["attack", "layer", "ASR clean", "ASR clean +v", "ASR triggered", "ASR triggered -v",
                        "ASR triggered -v (keyword)", "clean NLL -v"], rows, 2),
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
        band(ax, x, [r["top_asr"] for r in rows], marker="o", label="top heads (BAHA)")
        band(ax, x, [r["random_asr"] for r in rows], marker="s", label="random heads (pooled)")
        ax.axhline(value(a["ablation"]["none_asr"]), ls="--", c="gray", label="no ablation")
        ax.set(title=f"{name}: head ablation", xlabel="% of heads ablated", ylabel="ASR", ylim=(-0.02, 1.02))
        ax.legend()
    save_figure(fig, folder / "ablation_curve.png")

    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    for ax, (name, a) in zip(axes[0], attacks.items()):
        rows = a["vector"]["rows"]
        layers = [r["layer"] for r in rows]
        band(ax, layers, [r["clean_plus_asr"] for r in rows], marker="o", label="clean prompts, +v")
        band(ax, layers, [r["triggered_minus_asr"] for r in rows], marker="s", label="triggered prompts, -v")
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
        f"d_model {m['d_model']}). Seeds: {', '.join(str(s) for s in summary['seeds'])}"
        + (f"; stages reused from an earlier run: {reused}" if reused else "") + ". Configuration: summary.json; "
        "each seed's numbers: seed-<s>/summary.json.",
        *([pending_note(summary)] if summary.get("pending") else []),
        backdoor_section(attacks),
        probe_section(attacks),
        f"Fully analysed (BAHA, head ablation, backdoor vector): {', '.join(analysed) or 'none'}; the other attacks "
        "have their backdoor metrics and probe only (`n_analysed` in the configuration).",
        *([baha_section(analysed), ablation_section(analysed), vector_section(analysed)] if analysed else []),
        provenance_footer(summary),
    ])
    write_text(out / "report.md", text + "\n")
