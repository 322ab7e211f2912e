"""Render the Backdoor Collapse grid's summary as report.md and aggregation.png: ASR per attack and
defense beside the paper's average, the clean measure, stage 1's effect and the aggregation evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from ...util.io import write_text
from ..common.report import markdown_table, save_figure

CLEAN_TOLERANCE = 0.5
"""The paper keeps clean accuracy within 0.5 points of the undefended model."""
DEFENSES = {
    "backdoored": "undefended",
    "collapse": "Collapse",
    "clean_ft": "clean fine-tuning",
    "baha_heads": "BAHA top heads ablated*",
    "vector": "backdoor vector subtracted*",
    "mean_ablation": "MLP mean-ablated*",
}
"""Report column of each measured state (* reads the attacker's triggered prompts)."""


def _states(summary: dict[str, Any]) -> list[str]:
    return [s for s in DEFENSES if s in summary["average"]]


def metric_table(summary: dict[str, Any], metric: str, digits: int = 2) -> str:
    """One row per attack and the average: `metric` in each state."""
    states = _states(summary)
    rows = [[name] + [a["measures"][s][metric] for s in states] for name, a in summary["attacks"].items()]
    rows.append(["**average**"] + [summary["average"][s][metric] for s in states])
    return markdown_table(["attack"] + [DEFENSES[s] for s in states], rows, digits)


def asr_section(summary: dict[str, Any]) -> str:
    """ASR and ATR per attack and defense, beside the paper's average."""
    collapse = summary["average"]["collapse"]["asr"]
    undefended = summary["average"]["backdoored"]["asr"]
    best = min((s for s in _states(summary) if s != "backdoored"), key=lambda s: summary["average"][s]["asr"])
    return "\n".join([
        "## Attack success after each defense",
        "",
        "ASR: the attacker's target in the greedy reply to held-out triggered prompts. Collapse and clean fine-tuning "
        "see only the defender's clean prompts (the same number of optimiser steps each); the starred baselines read "
        "the attacker's triggered prompts (a separate selection split), which a real defender does not have.",
        "",
        metric_table(summary, "asr"),
        "",
        f"Paper (Backdoor Collapse, its abstract): average ASR {100 * summary['paper_average_asr']:.2f}% after the "
        f"defense. Ours: {100 * collapse:.1f}% after Collapse, from {100 * undefended:.1f}% undefended; the lowest "
        f"average here: {DEFENSES[best]} ({100 * summary['average'][best]['asr']:.1f}%).",
        "",
        "### Accidental triggering (ATR, clean prompts)",
        "",
        metric_table(summary, "atr"),
    ])


def clean_section(summary: dict[str, Any]) -> str:
    """Clean accuracy and NLL after each defense, against the 0.5-point tolerance."""
    rows = []
    for name, a in summary["attacks"].items():
        reference = a["measures"]["backdoored"]["clean_accuracy"]
        for state in _states(summary)[1:]:
            m = a["measures"][state]
            delta = m["clean_accuracy"] - reference
            rows.append([name, DEFENSES[state], reference, m["clean_accuracy"], delta, m["clean_nll"],
                         "yes" if delta >= -CLEAN_TOLERANCE else "no"])
    return "\n".join([
        "## Clean behaviour",
        "",
        "Clean accuracy: the share (in %) of the base model's greedy answer tokens, on held-out clean prompts, that the "
        "model ranks first (teacher-forced; the base model itself scores 100). Clean NLL: the mean per-token negative "
        f"log-likelihood of the same answers. Kept: within {CLEAN_TOLERANCE} points of the undefended model (or above).",
        "",
        markdown_table(["attack", "defense", "accuracy undefended", "accuracy after", "change (points)", "clean NLL after",
                        "kept"], rows, 2),
        "",
        "### Average clean accuracy (%)",
        "",
        metric_table(summary, "clean_accuracy"),
    ])


def stage_section(summary: dict[str, Any]) -> str:
    """Known-trigger and attacker-trigger behaviour around each of Collapse's stages."""
    rows = []
    for name, a in summary["attacks"].items():
        m = a["measures"]
        rows.append([name, m["backdoored"]["known_to_defender"], m["stage1"]["known_to_defender"],
                     m["collapse"]["known_to_defender"], m["stage1"]["attacker_to_defender"], m["backdoored"]["asr"],
                     m["stage1"]["asr"], m["collapse"]["asr"]])
    t = next(iter(summary["attacks"].values()))["training"]
    return "\n".join([
        "## What each stage does",
        "",
        "Known → target: the defender's target in the reply to held-out prompts carrying a known trigger (word, phrase "
        "or prefix, in turn). Attacker → defender target: the same target after the attacker's trigger, the sign that "
        "the unknown trigger has joined the known ones.",
        "",
        markdown_table(["attack", "known → target, undefended", "after stage 1", "after stage 2",
                        "attacker → defender target after stage 1", "attacker ASR undefended", "after stage 1",
                        "after stage 2"], rows, 2),
        "",
        f"Training per attack: stage 1 {t['stage1']['steps']} steps, stage 2 {t['collapse']['steps']} steps "
        f"({t['collapse_steps']} in all); clean fine-tuning {t['clean_ft']['steps']} steps.",
    ])


def aggregation_section(summary: dict[str, Any]) -> str:
    """Centroid distances, direction cosine and probe transfer before and after stage 1."""
    rows = []
    for name, a in summary["attacks"].items():
        for state in ("before", "after"):
            e = a["aggregation"][state]
            rows.append([name, "undefended" if state == "before" else "after stage 1", e["clean_to_known"],
                         e["clean_to_attacker"], e["known_to_attacker"], e["direction_cosine"], e["probe_transfer"],
                         e["attacker_read_as_known"]])
    layer = summary["config"]["aggregation_layer"]
    return "\n".join([
        "## Aggregation evidence",
        "",
        f"Residual stream entering layer {layer if layer is not None else summary['model']['n_layers'] // 2} at the last "
        "prompt token, held-out prompts. Distances between group centroids are in units of the clean rows' mean "
        "distance to their centroid; cosine: between the known and the attacker trigger directions (centroid minus the "
        "clean centroid); probe transfer: accuracy on clean vs attacker rows of a logistic probe fit on clean vs "
        "known rows (attacker read as known: the share of attacker rows it calls known).",
        "",
        markdown_table(["attack", "model", "clean–known", "clean–attacker", "known–attacker", "direction cosine",
                        "probe transfer", "attacker read as known"], rows, 3),
        "",
        "![Clean, known-trigger and attacker-trigger representations before and after stage 1](aggregation.png)",
    ])


def figure(summary: dict[str, Any], path: Path) -> None:
    """Per attack, the clean / known (by kind) / attacker representations before and after stage 1 (2-D PCA)."""
    attacks = summary["attacks"]
    kinds = [t["name"] for t in summary["config"]["defense"]["known_triggers"]]
    fig, axes = plt.subplots(len(attacks), 2, figsize=(9, 3.6 * len(attacks)), squeeze=False, layout="constrained")
    for row, (name, a) in zip(axes, attacks.items()):
        for ax, state in zip(row, ("before", "after")):
            coords = a["aggregation"][f"{state}_coords"]
            layers = [("clean", coords["clean"], "tab:gray", "o")]
            layers += [(kind, [p for p, k in zip(coords["known"], a["aggregation"]["known_kind"]) if k == i], colour, "^")
                       for i, (kind, colour) in enumerate(zip(kinds, ("tab:blue", "tab:cyan", "tab:green", "tab:olive")))]
            layers.append((f"attacker ({name})", coords["attacker"], "tab:red", "x"))
            for label, points, colour, marker in layers:
                if points:
                    xs, ys = zip(*points)
                    ax.scatter(xs, ys, s=14, c=colour, marker=marker, alpha=0.7, label=label)
            ax.set(title=f"{name}: {'undefended' if state == 'before' else 'after stage 1'}", xlabel="PC 1", ylabel="PC 2")
            ax.legend(fontsize=7)
    save_figure(fig, path)


def write(summary: dict[str, Any], out: Path) -> None:
    """report.md and aggregation.png in `out`."""
    figure(summary, out / "aggregation.png")
    m, c = summary["model"], summary["config"]
    weight = c["defense"]["aggregation_weight"]
    loss = f"with stage 1's aggregation loss at weight {weight}" if weight else "without the optional aggregation loss"
    text = "\n\n".join([
        "# Backdoor Collapse against five BackdoorLLM attacks",
        f"Model: {m['name']} ({m['n_layers']} layers x {m['n_heads']} heads, d_model {m['d_model']}). Attacks planted as in "
        f"`make smollm` ({c['plant']['n_clean']} clean + {c['plant']['n_poison']} poisoned rows). The defender has "
        f"{c['n_defense']} clean prompts the attacker did not use and the suspect model's own answers to them; every "
        f"state is measured on {c['n_test']} held-out prompts. Backdoor Collapse is reconstructed from its abstract "
        f"(arXiv 2510.10265; the official code was not reachable), {loss}. "
        f"This invocation took {summary['seconds']} s; configuration in summary.json.",
        asr_section(summary),
        clean_section(summary),
        stage_section(summary),
        aggregation_section(summary),
    ])
    write_text(out / "report.md", text + "\n")
