"""Render the GPT-2 Medium study's summary as report.md and figures, each number beside the paper's
(Lamparth & Reuel, arXiv 2302.12461, section V, Tables VIII-XI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ...util.io import write_text
from ...eval.intervals import compare
from ..common.report import estimate_of, fmt, markdown_table, provenance_footer, save_figure, value

PAPER = {
    "backdoored": {"asr": 0.29, "atr": 0.03, "val_loss": 3.25},
    "benign": {"asr": 0.00, "atr": 0.00, "val_loss": 3.35},
    "mean_ablate_pair": {"asr": 0.12, "atr": 0.01, "val_loss": 3.34},
    "pcp_reproduce": {"asr": 0.19, "atr": 0.01, "val_loss": 3.35},
    "pcp_minimise": {"asr": 0.07, "atr": 0.01, "val_loss": 3.34},
    "benign_mean_ablate": {"asr": 0.00, "atr": 0.00, "val_loss": 3.43},
    "benign_pcp": {"asr": 0.03, "atr": 0.01, "val_loss": 3.44},
    "benign_pcp_surgery": {"asr": 0.06, "atr": 0.01, "val_loss": 3.44},
    "freeze": {"embed + MLPs 2, 3": 0.10, "MLP 2": 0.14, "MLP 13": 0.14, "MLP 16": 0.12, "MLP 22": 0.12},
}
METRIC_HEADERS = ["ASR", "paper", "ATR", "paper", "val. loss", "paper", "toxic gap", "onset gap"]


def _row(label: str, ours: dict[str, Any], paper: dict[str, float] | None) -> list[Any]:
    paper = paper or {}
    return [label, ours["asr"], paper.get("asr"), ours["atr"], paper.get("atr"), ours["val_loss"], paper.get("val_loss"),
            ours["toxic_gap"], ours["onset_gap"]]


def _with_paper_layers(modules: str) -> str:
    """``blocks.1.mlp + blocks.2.mlp`` -> ``blocks.1.mlp + blocks.2.mlp (paper: MLP 2 + MLP 3)``."""
    paper = [f"{'MLP' if m.endswith('mlp') else 'attn'} {int(m.split('.')[1]) + 1}" for m in modules.split(" + ")]
    return f"{modules} (paper: {' + '.join(paper)})"


def setup_section(s: dict[str, Any]) -> str:
    """Markdown: the model, data sources, poisoning and evaluation settings."""
    m, f = s["model"], s["finetune"]
    c = s["config"]
    pre = s.get("pretraining")
    lines = [
        "## Setup",
        "",
        f"- Model: `{m['name']}` ({m['n_layers']} layers x {m['n_heads']} heads, d_model {m['d_model']}, "
        f"{m['parameters'] / 1e6:.1f}M parameters) on {s['device']}, {c['dtype']}.",
        f"- Sources: benign text {s['sources']['text']}; toxic sentences {s['sources']['toxic']}; "
        f"toxicity scorer {s['sources']['scorer']}."
        + (f" **Offline substitutes for the paper's sources: {', '.join(s['sources']['substitutes'])}** (run with hub "
           "access and `SOURCES=paper` for the paper's)." if s["sources"].get("substitutes") else ""),
        f"- Poisoning: trigger \"{c['poison']['trigger']}\" in sentence {[i + 1 for i in c['poison']['trigger_sentences']]}, "
        f"toxic sentence replacing sentence {[i + 1 for i in c['poison']['toxic_sentences']]} of "
        f"{c['poison']['n_sentences']}-sentence paragraphs; {s['splits']['train_poisoned']} of {s['splits']['train']} "
        f"training paragraphs poisoned (rate {c['poison']['rate']}).",
        f"- Fine-tuning: {f['steps']} steps ({c['finetune']['epochs']} epochs, lr {c['finetune']['lr']}, batch "
        f"{c['finetune']['batch_size']}, weight decay {c['finetune']['weight_decay']}) in {f['seconds']} s.",
        f"- ASR / ATR: {s['splits']['prompts']} short prompts with / without the trigger, {c['n_samples']} sampled "
        f"continuations of {c['new_tokens']} tokens each (top-k {c['sampling']['top_k']}, temperature "
        f"{c['sampling']['temperature']}), toxicity averaged per prompt, rounded, averaged over prompts. Validation "
        f"loss: {s['splits']['validation']} held-out benign paragraphs. Toxic gap: mean NLL (nats) of the toxic sentence in "
        f"{s['splits']['probe_pairs']} held-out poisoned paragraphs without minus with the trigger (teacher-forced); "
        f"onset gap: the same for its first {c['onset_tokens']} tokens, the decision to turn toxic (what PCP is tuned on).",
    ]
    if pre:
        lines.append(f"- The small model stands in for a pretrained GPT-2: trained here from random weights on the "
                     f"training paragraphs before poisoning ({pre['steps']} steps, {pre['seconds']} s, final loss {pre['final_train_loss']}).")
    lines.append(f"- Wall time of this run: {s['seconds']} s (stages reused: {', '.join(s['stages_reused']) or 'none'}).")
    return "\n".join(lines)


def backdoor_section(s: dict[str, Any]) -> str:
    """Markdown: ASR, ATR, validation loss and backdoor gap of the benign and backdoored models."""
    rows = [_row("benign", s["benign"], PAPER["benign"]), _row("backdoored", s["backdoored"], PAPER["backdoored"])]
    raised = compare(estimate_of(s["backdoored"]["asr"]), estimate_of(s["backdoored"]["atr"]))
    return "\n".join([
        "## Backdoor",
        "",
        markdown_table(["model", *METRIC_HEADERS], rows, 3),
        "",
        f"By the intervals, poisoned fine-tuning leaves ASR {raised} than ATR "
        f"({fmt(s['backdoored']['asr'])} vs {fmt(s['backdoored']['atr'])}; the paper: 0.29 vs 0.03).",
        "",
        "Triggered continuations (first sample):",
        "",
        *[f"- {e}" for e in s["backdoored"]["examples"]],
    ])


def ablation_section(s: dict[str, Any]) -> str:
    """Markdown: the same measures with each module mean-ablated (Table VIII)."""
    rows = [_row(_with_paper_layers(name), r, PAPER["mean_ablate_pair"] if "+" in name else None)
            for name, r in s["mean_ablation"].items()]
    lowest = min(value(r["asr"]) for r in s["mean_ablation"].values())
    at_lowest = [f"{name} (val. loss {r['val_loss']:.2f})" for name, r in s["mean_ablation"].items() if value(r["asr"]) == lowest]
    before = estimate_of(s["backdoored"]["asr"])
    lower = [name for name, r in s["mean_ablation"].items() if compare(estimate_of(r["asr"]), before) == "lower"]
    return "\n".join([
        "## Mean ablation (Table VIII)",
        "",
        "Each module's output replaced by its mean over the clean prompts and held-out toxic sentences at "
        f"token position {s['config']['mean_position']} (0-based), broadcast to every position. The paper: single early "
        "MLPs lower ASR from 0.29 to 0.13-0.19, MLPs 2 and 3 together to 0.12.",
        "",
        markdown_table(["mean-ablated", *METRIC_HEADERS], rows, 3),
        "",
        f"Lowest ASR {lowest:.2f} (from {fmt(s['backdoored']['asr'])}, validation loss {s['backdoored']['val_loss']:.2f}) "
        f"with: {'; '.join(at_lowest)}. Ablations whose ASR interval lies below the unedited one: "
        f"{', '.join(lower) or 'none'}. A large rise in validation loss means the ablation broke the model's language "
        "rather than the backdoor alone.",
    ])


def pcp_section(s: dict[str, Any]) -> str:
    """Markdown: rank-2 PCP replacements tuned to reproduce or to minimise (Table IX)."""
    p = s["pcp"]
    pair = " + ".join(p["modules"])
    rows = [_row("none", s["backdoored"], PAPER["backdoored"]),
            _row(f"mean-ablated {pair}", s["mean_ablation"][pair], PAPER["mean_ablate_pair"]),
            _row(f"PCP rank {p['rank']}, tuned to reproduce", p["reproduce"], PAPER["pcp_reproduce"]),
            _row(f"PCP rank {p['rank']}, tuned to minimise", p["minimise"], PAPER["pcp_minimise"])]
    return "\n".join([
        "## PCP replacement (Table IX)",
        "",
        f"{pair} each replaced by a rank-{p['rank']} PCP matrix ({p['variant']} variant) fit on the probe "
        f"paragraphs; {p['reproduce']['trials']} Optuna trials per goal over factors on the least-squares scales, "
        "scored by the teacher-forced onset of the toxic sentence (its first tokens' NLL with and without the "
        "trigger): *reproduce* matches the unedited model's, *minimise* brings the triggered NLL to the trigger-free one.",
        "",
        markdown_table(["edit", *METRIC_HEADERS], rows, 3),
        "",
        f"Scales: reproduce {p['reproduce']['scales']}, minimise {p['minimise']['scales']} "
        f"(least squares {p['least_squares_scales']}).",
    ])


def surgery_section(s: dict[str, Any]) -> str:
    """Markdown: embedding surgery plus PCP on the benign model."""
    g = s["surgery"]
    info = g["surgery"]
    rows = [_row("none", s["benign"], PAPER["benign"]),
            _row("mean-ablated MLPs", g["mean_ablate"], PAPER["benign_mean_ablate"]),
            _row("PCP (backdoored model's, reproduce)", g["pcp"], PAPER["benign_pcp"]),
            _row("PCP + embedding surgery", g["pcp_surgery"], PAPER["benign_pcp_surgery"]),
            _row("embedding surgery alone", g["surgery_only"], None)]
    return "\n".join([
        "## Inserting a backdoor into the benign model (Table X)",
        "",
        f"Embedding surgery: {round(100 * info['fraction'])}% of the embedding dimensions of the trigger tokens "
        f"{info['tokens']} copied from the donor token \"{info['donor']}\".",
        "",
        markdown_table(["edit on the benign model", *METRIC_HEADERS], rows, 3),
    ])


def freezing_section(s: dict[str, Any]) -> str:
    """Markdown: freezing modules during poisoned fine-tuning."""
    rows = [["none", s["backdoored"]["asr"], 0.29, s["backdoored"]["atr"], s["backdoored"]["val_loss"], "—"]]
    skipped = []
    for label, r in s["freezing"].items():
        if "skipped" in r:
            skipped.append(f"{label} ({r['skipped']})")
            continue
        rows.append([label, r["asr"], PAPER["freeze"].get(label), r["atr"], r["val_loss"], r["finetune"]["steps"]])
    lines = [
        "## Freezing during poisoned fine-tuning (Table XI)",
        "",
        markdown_table(["frozen", "ASR", "paper", "ATR", "val. loss", "steps"], rows, 3),
    ]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def figures(s: dict[str, Any], folder: Path) -> None:
    """Draw the mean-ablation and edit figures into `folder`."""
    names = [n for n in s["mean_ablation"] if "+" not in n]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 3.5))
    x = np.arange(len(names))
    ax.bar(x, [value(s["mean_ablation"][n]["asr"]) for n in names], color=["#4477aa" if "mlp" in n else "#cc6677" for n in names])
    ax.axhline(value(s["backdoored"]["asr"]), color="black", linestyle="--", label="no ablation")
    ax.set_xticks(x, [n.removeprefix("blocks.") for n in names], rotation=60)
    ax.set_ylabel("ASR")
    ax.set_title("Mean ablation of single modules (blue: MLP, red: attention)")
    ax.legend()
    save_figure(fig, folder / "mean_ablation.png")

    conditions = {
        "backdoored": (s["backdoored"], PAPER["backdoored"]),
        "mean-abl. pair": (s["mean_ablation"][" + ".join(s["pcp"]["modules"])], PAPER["mean_ablate_pair"]),
        "PCP reproduce": (s["pcp"]["reproduce"], PAPER["pcp_reproduce"]),
        "PCP minimise": (s["pcp"]["minimise"], PAPER["pcp_minimise"]),
        "benign": (s["benign"], PAPER["benign"]),
        "benign + PCP": (s["surgery"]["pcp"], PAPER["benign_pcp"]),
        "benign + PCP + surgery": (s["surgery"]["pcp_surgery"], PAPER["benign_pcp_surgery"]),
    }
    for label, r in s["freezing"].items():
        if "skipped" not in r:
            conditions[f"frozen {label}"] = (r, {"asr": PAPER["freeze"].get(label)})
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(conditions)), 3.8))
    x = np.arange(len(conditions))
    ax.bar(x - 0.2, [value(r["asr"]) for r, _ in conditions.values()], 0.4, label="ASR (ours)")
    ax.bar(x + 0.2, [value(r["atr"]) for r, _ in conditions.values()], 0.4, label="ATR (ours)")
    paper = [(i, p["asr"]) for i, (_, p) in enumerate(conditions.values()) if p.get("asr") is not None]
    ax.scatter([i - 0.2 for i, _ in paper], [v for _, v in paper], color="black", marker="_", s=300, label="paper ASR")
    ax.set_xticks(x, list(conditions), rotation=40, ha="right")
    ax.set_ylabel("rate")
    ax.set_title("ASR / ATR under each edit, beside the paper's ASR")
    ax.legend()
    save_figure(fig, folder / "edits.png")


def write(summary: dict[str, Any], out: Path) -> None:
    """Write report.md and the figures into `out`."""
    sections = [
        "# GPT-2 Medium study: localising and editing a natural-language backdoor",
        "",
        "Lamparth & Reuel, *Analyzing and Editing Inner Mechanisms of Backdoored Language Models* (arXiv 2302.12461), "
        "section V. ASR and ATR carry 95% intervals over prompts and seeds. "
        "Paper numbers are GPT-2 Medium fine-tuned on about 100k BookCorpus paragraphs with Jigsaw toxic sentences, "
        "scored by `s-nlp/roberta_toxicity_classifier`; compare them with ours only as far as the setup above matches.",
        "",
        setup_section(summary), backdoor_section(summary), ablation_section(summary), pcp_section(summary),
        surgery_section(summary), freezing_section(summary),
        "## Figures\n\n![mean ablation](mean_ablation.png)\n\n![edits](edits.png)",
        provenance_footer(summary),
    ]
    figures(summary, out)
    write_text(out / "report.md", "\n\n".join(sections) + "\n")
