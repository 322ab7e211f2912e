"""Render the defense grid's summary as report.md, pareto.png and aggregation.png: ASR per attack and
defense with intervals, the clean cost of each defense, the Pareto front of the two, the papers'
numbers beside ours, what Backdoor Collapse's stages do, the aggregation evidence and where the compute
time goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from ...eval.intervals import Estimate, compare, sign_verdict
from ...util.io import write_text
from ..common.report import (
    estimate_of,
    fmt,
    heads_share,
    markdown_table,
    pending_note,
    provenance_footer,
    save_figure,
    value,
)

LABELS = {
    "backdoored": "undefended",
    "collapse": "Collapse (faithful)",
    "collapse_improved": "Collapse (improved)",
    "clean_ft": "clean fine-tuning",
    "fine_pruning": "fine-pruning",
    "crow": "CROW",
    "beear": "BEEAR",
    "int8": "INT8 weights",
    "int4": "INT4 weights",
    "temperature": "decoding temperature",
    "cleangen": "CleanGen",
    "baha_heads": "BAHA top heads ablated*",
    "vector": "backdoor vector subtracted*",
    "mean_ablation": "MLP mean-ablated*",
}
"""Report name of each measured state (* reads the attacker's triggered prompts: an oracle)."""
ORACLES = ("baha_heads", "vector", "mean_ablation")
AIM_ASR, AIM_COST = 0.05, 1.0
"""The issue's aim: average ASR at most 5% at a clean cost of at most 1 point of accuracy."""


def _states(summary: dict[str, Any]) -> list[str]:
    return [s for s in LABELS if s in summary["average"]]


def _label(state: str) -> str:
    """A state's report name; a candidate column reads "Collapse + <change>"."""
    return LABELS.get(state) or f"Collapse + {state.removeprefix('candidate_').replace('_', ' ')}"


def _points(share: Any) -> Estimate:
    """A stored estimate of a share (0-1) as an estimate in points (%)."""
    e = estimate_of(share)
    return Estimate(100 * e.value, 100 * e.low, 100 * e.high, e.method, e.n_seeds, e.n, tuple(100 * v for v in e.per_seed))


def _accuracy(measures: dict[str, Any]) -> Estimate:
    """Clean accuracy as an estimate in points (the per-prompt shares, scaled to %)."""
    return _points(measures["clean_accuracy_per_prompt"])


def cost(summary: dict[str, Any], state: str) -> Estimate:
    """`state`'s clean cost in points: the paired drop from the undefended model (see
    :func:`~backdoor_lens.experiments.collapse.study.clean_costs`)."""
    return _points({k: v for k, v in summary["clean_costs"][state].items() if k != "measure"})


def aim_verdict(summary: dict[str, Any], state: str) -> str:
    """Whether `state` meets the aim (ASR ≤ 5% and clean cost ≤ 1 point) by the intervals."""
    asr, drop = estimate_of(summary["average"][state]["asr"]), cost(summary, state)
    if asr.high <= AIM_ASR and drop.high <= AIM_COST:
        return "meets"
    if asr.low > AIM_ASR or drop.low > AIM_COST:
        return "misses"
    return "inconclusive"


PLANTED_ASR = 0.9
"""An attack counts as planted when the undefended model's ASR interval reaches this rate."""


def planting_note(summary: dict[str, Any]) -> str:
    """Markdown: the attacks whose undefended ASR lies below :data:`PLANTED_ASR` by its interval ("" when
    none), since a defense has little to remove where the attack did not take."""
    weak = {a: r["measures"]["backdoored"]["asr"] for a, r in summary["attacks"].items()
            if estimate_of(r["measures"]["backdoored"]["asr"]).high < PLANTED_ASR}
    if not weak:
        return ""
    return (f"Planted weakly (undefended ASR below {PLANTED_ASR:g} by its interval): "
            + "; ".join(f"{a} {fmt(asr)}" for a, asr in weak.items())
            + ". A defense has less to remove there: read its column against the undefended row, not against 0.")


def asr_section(summary: dict[str, Any]) -> str:
    """ASR per defense and attack, with intervals, beside the papers' numbers."""
    attacks = list(summary["attacks"])
    rows = [[LABELS[s], *[summary["attacks"][a]["measures"][s]["asr"] for a in attacks], summary["average"][s]["asr"],
             summary["average"][s]["asr_keyword"], summary["average"][s]["atr"]] for s in _states(summary)]
    collapse = estimate_of(summary["average"]["collapse"]["asr"])
    paper = summary["paper"]["collapse_average_asr"]
    return "\n".join([
        "## Attack success after each defense",
        "",
        "ASR: the attacker's target in the greedy reply (32 new tokens, or the decoding defense's own sampling) to "
        "held-out triggered prompts, by exact substring; the keyword column counts a refusal phrase for a refusal "
        "target, or all of the target's content words otherwise. ATR: the substring on held-out clean prompts. 95% "
        "intervals over prompts and seeds; the average pools every attack's prompts. Only the starred rows read the "
        "attacker's triggered prompts (a separate selection split), an oracle a real defender lacks; every training "
        "defense gets the faithful Collapse's number of optimiser steps.",
        "",
        markdown_table(["defense", *attacks, "average ASR", "average ASR (keyword)", "average ATR"], rows),
        "",
        *([weak, ""] if (weak := planting_note(summary)) else []),
        f"Paper (Backdoor Collapse, arXiv 2510.10265, abstract): average ASR {100 * paper:.2f}% after the defense. Ours "
        f"after the faithful reconstruction: {fmt(collapse)} ({'consistent' if collapse.low <= paper <= collapse.high else 'differs'}"
        " by our interval). BackdoorLLM's DefenseBox (LLaMA-2-7B, README) reports CleanGen and CROW down to 0.09% ASR on "
        "refusal backdoors and weak on jailbreak ones; BEEAR (arXiv 2406.17092) reports RLHF-backdoor ASR from above 95% "
        "to below 1% on 7B models. Those are far larger models and other data: read them as what the methods can do, "
        "not as the same experiment.",
    ])


CLEANGEN_NOTE = ("CleanGen decodes against a reference model, here the base model before the attack (the study has it; "
                 "a defender handed only the suspect model may not). Whenever the suspect model favours a token far more than "
                 "the reference does, CleanGen emits the reference's token instead, so a reply agreement near 1 means it "
                 "answered as the clean base model would: its cost can be negative, and its aim verdict holds only for a "
                 "defender who has that model.")


def clean_section(summary: dict[str, Any]) -> str:
    """Clean accuracy, its change, reply agreement and perplexity per defense, and the aim's verdict."""
    rows = []
    for s in _states(summary):
        avg = summary["average"][s]
        rows.append([LABELS[s], _accuracy(avg), "" if s == "backdoored" else cost(summary, s), avg["reply_agreement"],
                     avg["perplexity"], "" if s == "backdoored" else aim_verdict(summary, s)])
    meets = [LABELS[s] for s in _states(summary) if s != "backdoored" and s not in ORACLES and aim_verdict(summary, s) == "meets"]
    tolerance = summary["paper"]["collapse_clean_tolerance_points"]
    drop = cost(summary, "collapse")
    return "\n".join([
        "## Clean behaviour and the aim",
        "",
        "Clean accuracy: the share (%) of the base model's own generated answer tokens, on held-out clean prompts, that "
        "the model ranks first (teacher-forced; the base model scores 100). Reply agreement: the share of the answers' "
        "first 16 tokens that the state's own replies repeat (generation, so decoding defenses pay here for what they "
        "change). Cost: the drop in clean accuracy from the undefended model, in points, paired over the same prompts; "
        "for the decoding defenses (temperature, CleanGen), whose logits are the undefended model's, the drop in reply "
        "agreement, in points. Perplexity: on held-out BBC News sentences "
        f"(decoding defenses do not change it). Aim: average ASR ≤ {100 * AIM_ASR:.0f}% at a cost ≤ {AIM_COST:g} point, "
        "read from the intervals.",
        "",
        markdown_table(["defense", "clean accuracy", "cost (points)", "reply agreement", "perplexity", "aim"], rows),
        "",
        f"Trigger-agnostic defenses that meet the aim: {', '.join(meets) or 'none'}. Paper: Backdoor Collapse keeps clean "
        f"accuracy within {tolerance:g} points; ours after the faithful reconstruction costs {fmt(drop)} points.",
        *(["", CLEANGEN_NOTE] if "cleangen" in summary["average"] else []),
        "",
        "![ASR against clean cost per defense](pareto.png)",
    ])


def pareto_front(summary: dict[str, Any]) -> list[str]:
    """The trigger-agnostic defenses no other beats on both average ASR and clean cost (point values)."""
    points = {s: (value(summary["average"][s]["asr"]), cost(summary, s).value)
              for s in _states(summary) if s not in ORACLES and s != "backdoored"}
    return [s for s, (a, c) in points.items()
            if not any(a2 <= a and c2 <= c and (a2, c2) != (a, c) for s2, (a2, c2) in points.items() if s2 != s)]


def pareto_figure(summary: dict[str, Any], path: Path) -> None:
    """Average ASR against clean cost per defense, with 95% intervals; the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    front = pareto_front(summary)
    for s in _states(summary):
        if s == "backdoored":
            continue
        asr, drop = estimate_of(summary["average"][s]["asr"]), cost(summary, s)
        colour = "tab:gray" if s in ORACLES else ("tab:red" if s in front else "tab:blue")
        ax.errorbar(drop.value, asr.value, xerr=[[drop.value - drop.low], [drop.high - drop.value]],
                    yerr=[[asr.value - asr.low], [asr.high - asr.value]], fmt="o", c=colour, capsize=3, alpha=0.85)
        ax.annotate(LABELS[s], (drop.value, asr.value), fontsize=7, xytext=(4, 4), textcoords="offset points")
    line = sorted((cost(summary, s).value, value(summary["average"][s]["asr"])) for s in front)
    if line:
        ax.plot(*zip(*line), c="tab:red", lw=1, alpha=0.6, label="Pareto front (trigger-agnostic)")
    ax.axhline(AIM_ASR, ls=":", c="black", lw=1)
    ax.axvline(AIM_COST, ls=":", c="black", lw=1, label=f"aim: ASR ≤ {100 * AIM_ASR:.0f}%, cost ≤ {AIM_COST:g} point")
    ax.axhline(value(summary["average"]["backdoored"]["asr"]), ls="--", c="gray", lw=1, label="undefended ASR")
    ax.set(xlabel="clean cost: drop in clean accuracy (points)", ylabel="average ASR (95% interval)",
           title=f"{summary['model']['name']}: defenses against five attacks ({len(summary['seeds'])} seed(s))")
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


def stage_section(summary: dict[str, Any]) -> str:
    """Known-trigger and attacker-trigger behaviour around each of the faithful Collapse's stages."""
    rows = []
    for name, a in summary["attacks"].items():
        m = a["measures"]
        rows.append([name, m["backdoored"]["known_to_defender"], m["stage1"]["known_to_defender"],
                     m["collapse"]["known_to_defender"], m["stage1"]["attacker_to_defender"], m["backdoored"]["asr"],
                     m["stage1"]["asr"], m["collapse"]["asr"]])
    t = next(iter(summary["attacks"].values()))["training"]
    return "\n".join([
        "## What each stage of Collapse does",
        "",
        "Known → target: the defender's target in the reply to held-out prompts carrying a known trigger (word, phrase "
        "or prefix, in turn). Attacker → defender target: the same target after the attacker's trigger, the sign that "
        "the unknown trigger has joined the known ones.",
        "",
        markdown_table(["attack", "known → target, undefended", "after stage 1", "after stage 2",
                        "attacker → defender target after stage 1", "attacker ASR undefended", "after stage 1",
                        "after stage 2"], rows),
        "",
        f"Training per attack: faithful Collapse {fmt(t['collapse']['stage1']['steps'], 0)} + "
        f"{fmt(t['collapse']['stage2']['steps'], 0)} steps; improved {fmt(t['collapse_improved']['stage1']['steps'], 0)} + "
        f"{fmt(t['collapse_improved']['stage2']['steps'], 0)}; every other training defense "
        f"{fmt(t['budget']['steps'], 0)} steps at learning rate {t['budget']['lr']:g}.",
    ])


def carried_note(summary: dict[str, Any]) -> str:
    """Markdown: which results were measured on planted weights from another machine ("" when none)."""
    carried = summary.get("carried")
    if not carried:
        return ""
    where = "; ".join(f"seed {seed}, {attack}: {stages if isinstance(stages, str) else ', '.join(stages)}"
                      for seed, attacks in carried.items() for attack, stages in attacks.items())
    return ("**Results carried from another machine.** These were computed from the same inputs on another "
            "machine, whose CPU rounds differently, so they were measured on planted weights that differ from "
            f"this run's in their last bits (each saved stage records the digest it was measured on): {where}.")


def cost_section(summary: dict[str, Any]) -> str:
    """Where the grid's compute time goes: seconds per column, summed over attacks and seeds, slowest first."""
    compute = summary.get("compute")
    if not compute or not compute["groups"]:
        return ""
    total, threads = compute["total"], summary.get("provenance", {}).get("torch_threads", "?")
    rows = [[{"plant": "planting the backdoor", "defender_answers": "the defender's answers"}.get(g) or _label(g),
             round(seconds), f"{100 * seconds / total:.0f}%"]
            for g, seconds in sorted(compute["groups"].items(), key=lambda kv: -kv[1])]
    untimed = compute["untimed_stages"]
    return "\n".join([
        "## Where the time goes",
        "",
        f"Compute seconds of each column's stages (training and measuring), summed over the attacks and seeds, at "
        f"{threads} torch thread(s): {round(total)} s in all ({total / 60:.0f} min). Each stage keeps the time it took "
        "when it was computed, so a resumed run still reports it"
        + (f"; {untimed} stage(s) were saved before stages were timed and are missing from the sum." if untimed else "."),
        "",
        markdown_table(["column", "seconds", "share"], rows),
    ])


def settings_section(summary: dict[str, Any]) -> str:
    """What the two Collapse presets and the oracles were."""
    c = summary["config"]
    faithful, improved = c["defense"], c["improved"]
    changed = {k: v for k, v in improved.items() if faithful.get(k) != v}
    oracle = next(iter(summary["attacks"].values()))["baselines"].get("baha_heads")
    heads = heads_share(c["head_fraction"], oracle["n_heads"], oracle["total_heads"]) if oracle else "—"
    return "\n".join([
        "## The presets",
        "",
        "Faithful: Backdoor Collapse as reconstructed from its abstract (the official code was not reachable): three "
        "known triggers (a word, a phrase, a prefix) mapped to a defender target in stage 1, then known-triggered and "
        f"clean prompts mapped back to the suspect model's own answers in stage 2. Improved: the faithful preset with "
        f"{', '.join(f'{k} = {v}' for k, v in changed.items()) or 'no changes yet'}. Oracle baselines ablate the top "
        f"{heads}.",
    ])


def changes_section(summary: dict[str, Any]) -> str:
    """The improved preset and each candidate change against the faithful Collapse, paired over prompts."""
    changes = summary.get("collapse_changes", {})
    if not changes:
        return ""
    rows = []
    for state, d in changes.items():
        asr, clean = estimate_of(d["asr"]), estimate_of(d["clean_accuracy_per_prompt"])
        rows.append([_label(state), summary["average"][state]["asr"], asr, sign_verdict(asr), estimate_of(d["asr_keyword"]),
                     Estimate(100 * clean.value, 100 * clean.low, 100 * clean.high, clean.method, clean.n_seeds, clean.n, ()),
                     sign_verdict(clean)])
    return "\n".join([
        "## What closes the gap: changes to Collapse",
        "",
        "Each row changes one thing in the faithful Collapse (the improved preset combines the ones chosen) and is "
        "compared with it on the same held-out prompts of every attack and seed: the mean per-prompt difference with a "
        "bootstrap interval, so the verdict says lower or higher only when the interval excludes 0.",
        "",
        markdown_table(["Collapse variant", "average ASR", "ASR change", "verdict", "keyword ASR change",
                        "clean accuracy change (points)", "verdict"], rows),
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
    cosines = {name: compare(estimate_of(a["aggregation"]["after"]["direction_cosine"]),
                             estimate_of(a["aggregation"]["before"]["direction_cosine"])) for name, a in summary["attacks"].items()}
    return "\n".join([
        "## Aggregation evidence",
        "",
        f"Residual stream entering layer {layer if layer is not None else summary['model']['n_layers'] // 2} at the last "
        "prompt token, held-out prompts (means over seeds). Distances between group centroids are in units of the clean "
        "rows' mean distance to their centroid; cosine: between the known and the attacker trigger directions (centroid "
        "minus the clean centroid); probe transfer: accuracy on clean vs attacker rows of a logistic probe fit on clean vs "
        "known rows (attacker read as known: the share of attacker rows it calls known).",
        "",
        markdown_table(["attack", "model", "clean–known", "clean–attacker", "known–attacker", "direction cosine",
                        "probe transfer", "attacker read as known"], rows, 3),
        "",
        "Direction cosine after stage 1 against before, per attack (from the spread over seeds; one seed gives no "
        "interval): " + "; ".join(f"{n}: {v}" for n, v in cosines.items()) + ".",
        "",
        "![Clean, known-trigger and attacker-trigger representations before and after stage 1](aggregation.png)",
    ])


def aggregation_figure(summary: dict[str, Any], path: Path) -> None:
    """Per attack, the clean / known (by kind) / attacker representations before and after stage 1 (2-D PCA, first seed)."""
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
    """report.md, pareto.png and aggregation.png in `out`."""
    pareto_figure(summary, out / "pareto.png")
    aggregation_figure(summary, out / "aggregation.png")
    m, c = summary["model"], summary["config"]
    text = "\n\n".join(part for part in [
        "# Removing a backdoor without its trigger: the defense grid",
        f"Model: {m['name']} ({m['n_layers']} layers x {m['n_heads']} heads, d_model {m['d_model']}). Attacks planted as "
        f"in `make smollm` ({c['plant']['n_clean']} clean + {c['plant']['n_poison']} poisoned rows). The defender has "
        f"{c['n_defense']} clean prompts the attacker did not use and the suspect model's own answers to them; every "
        f"state is measured on {c['n_test']} held-out prompts per attack and seed. Seeds: "
        f"{', '.join(str(s) for s in summary['seeds'])}.",
        pending_note(summary),
        carried_note(summary),
        asr_section(summary),
        clean_section(summary),
        settings_section(summary),
        changes_section(summary),
        stage_section(summary),
        aggregation_section(summary),
        cost_section(summary),
        provenance_footer(summary),
    ] if part)
    write_text(out / "report.md", text + "\n")
