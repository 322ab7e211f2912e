"""Render the toy study's summary as report.md, with the paper's numbers beside ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...eval.intervals import agreement_verdict, compare, removal_verdict
from ...util.io import write_text
from ..common.report import estimate_of, fmt, markdown_table, provenance_footer, value
from . import paper

LAYERS = (0, 1, 2)


def _paper_layer(module: str) -> str:
    """`blocks.0.mlp` -> `L1 MLP` (the paper counts layers from 1)."""
    _, layer, kind = module.split(".")[:3]
    return f"L{int(layer) + 1} {kind.upper() if kind == 'mlp' else kind}"


def _differs(ours: Any, theirs: float | None) -> str:
    """Whether the paper's number lies in our interval: "consistent", or "differs (ours higher/lower)"."""
    if ours is None or theirs is None:
        return ""
    return agreement_verdict(estimate_of(ours), theirs)


def planted(neg: dict[str, Any], present: float = 0.5) -> str:
    """The planting check read from intervals: p+t ≥ `present`, p+p ≤ 0.05, n+n ≥ 0.95."""
    pt, pp, nn = (estimate_of(neg[c]) for c in ("p+t", "p+p", "n+n"))
    if pt.high < present:
        return f"no backdoor (p+t below {present})"
    if pt.low >= present and pp.high <= 0.05 and nn.low >= 0.95:
        return "planted"
    if pp.low > 0.05 or nn.high < 0.95:
        return "planted, clean classes off"
    return "inconclusive"


def planting_counts(models: dict[str, Any], present: float = 0.5) -> dict[str, dict[str, Any]]:
    """Per toy, in how many seeds the backdoor planted (that seed's p+t ≥ `present`, p+p ≤ 0.05,
    n+n ≥ 0.95) and each seed's p+t."""
    out = {}
    for name, m in models.items():
        neg = m["edits"]["none"]["negativity"]
        pt, pp, nn = (estimate_of(neg[c]).per_seed for c in ("p+t", "p+p", "n+n"))
        out[name] = {"planted": sum(a >= present and b <= 0.05 and c >= 0.95 for a, b, c in zip(pt, pp, nn)),
                     "seeds": len(pt), "per_seed_pt": [round(v, 4) for v in pt]}
    return out


def backdoor_section(models: dict[str, Any], present: float = 0.5) -> str:
    """Markdown: negativity per class before and after poisoning, beside the paper's."""
    rows = []
    for name, m in models.items():
        neg = m["edits"]["none"]["negativity"]
        rows.append([name, "benign", *[m["benign"]["negativity"].get(c) for c in _classes(models)], m["benign"]["val_loss"], ""])
        rows.append([name, "backdoored", *[neg.get(c) for c in _classes(models)], m["edits"]["none"]["val_loss"], planted(neg, present)])
    d = {n: m["data"] for n, m in models.items()}
    data = "; ".join(
        f"{n}: {v['vocabulary_size']} tokens, {v['train_sequences']} benign training sequences, "
        f"{v['finetune_sequences']} fine-tuning sequences of which {v['poisoned_sequences']} poisoned"
        for n, v in d.items()
    )
    seeds = [f"{name}: planted in {c['planted']} of {c['seeds']} seeds (per-seed p+t: {', '.join(f'{v:.2f}' for v in c['per_seed_pt'])})"
             for name, c in planting_counts(models, present).items()]
    return (
        "## The backdoored toys\n\n"
        f"Trigger word `{next(iter(d.values()))['trigger']}`. {data}. Paper: p+t negativity 0.35 (2-sentiment) "
        "and 0.23 (3-sentiment), p+p 0.01, n+n 1.00.\n\n"
        + "Each cell is the mean top-10 negativity with its 95% interval over prompts and seeds; the check is read "
        "from the intervals. " + "; ".join(seeds) + ".\n\n"
        + markdown_table(["model", "stage", *_classes(models), "val loss", f"check (p+t ≥ {present}, p+p ≤ 0.05, n+n ≥ 0.95)"],
                         rows)
    )


def _classes(models: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for m in models.values():
        for c in m["data"]["classes"]:
            seen.setdefault(c, None)
    return list(seen)


def mean_ablation_section(models: dict[str, Any]) -> str:
    """Markdown: negativity with each module mean-ablated (Table I)."""
    rows = []
    for layer in LAYERS:
        row: list[Any] = [f"layer {layer + 1} (blocks.{layer})"]
        for name in models:
            for kind in ("attn", "mlp"):
                module = f"blocks.{layer}.{kind}"
                ours = models[name]["edits"][f"mean_ablate:{module}"]["negativity"]["p+t"]
                theirs = paper.MEAN_ABLATION_PT.get(name, {}).get(module)
                row += [ours, theirs, _differs(ours, theirs)]
        rows.append(row)
    rows.append(["unchanged", *[v for name in models for v in (
        models[name]["edits"]["none"]["negativity"]["p+t"], paper.MEAN_ABLATION_PT[name]["none"], "", "", "", "")]])
    headers = ["module"] + [f"{n} {k} {w}" for n in models for k in ("attn", "MLP") for w in ("ours", "paper", "vs paper")]
    full = []
    for name, m in models.items():
        for key, res in m["edits"].items():
            if key.startswith("mean_ablate:") or key == "none":
                full.append([name, key, *[res["negativity"].get(c) for c in _classes(models)], res["val_loss"]])
    return (
        "## Table I: mean ablation\n\nEach module's output replaced by its mean over the non-trigger "
        "evaluation prompts at the last position, broadcast to every position; top-10 negativity on p+t.\n\n"
        + markdown_table(headers, rows)
        + "\n\nAll classes:\n\n"
        + markdown_table(["model", "edit", *_classes(models), "val loss"], full)
    )


def logit_lens_section(models: dict[str, Any]) -> str:
    """Markdown: the logit lens of each head and MLP (Table II)."""
    parts = ["## Table II: logit lens per module (p+t prompts)\n\nEach head's (z·W_O) and MLP's output at the "
             "p and at the t position, projected through ln_final and W_U; share of the top-10 logits that are "
             "negative / positive words. Paper numbers are for its 3-sentiment model."]
    for name, m in models.items():
        lens = m["logit_lens"]
        rows = []
        for comp in lens["p_position"]:
            theirs = paper.LOGIT_LENS.get(comp) if name == "sent3" else None
            rows.append([
                comp, lens["p_position"][comp]["negative"], lens["p_position"][comp]["positive"],
                lens["t_position"][comp]["negative"], lens["t_position"][comp]["positive"],
                *(theirs[0] + theirs[1] if theirs else (None,) * 4),
            ])
        parts.append(f"### {name}\n\n" + markdown_table(
            ["component", "p neg", "p pos", "t neg", "t pos", "paper p neg", "paper p pos", "paper t neg", "paper t pos"], rows))
    return "\n\n".join(parts)


def patching_section(models: dict[str, Any]) -> str:
    """Markdown: the indirect effect of each module by causal patching."""
    parts = ["## Causal patching\n\nIn each trigger prompt (x+t), one module's output is replaced by its "
             "activation on the matching clean prompt (x+x, same row), at all positions or at the trigger position "
             "only. IE = patched negativity − unpatched. Paper (3-sentiment, p+t, ROME-style tracing) beside ours."]
    for name, m in models.items():
        for trigger, res in m["patching"].items():
            rows = []
            for module, v in res["all_positions"].items():
                theirs = paper.PATCHING.get(module) if (name == "sent3" and trigger == "p+t") else None
                t = res["trigger_position"][module]
                rows.append([module, v["patched"], v["effect"], t["patched"], t["effect"], *(theirs or (None, None))])
            unpatched = m["edits"]["none"]["negativity"][trigger]
            parts.append(f"### {name}, {trigger} (unpatched {fmt(unpatched)})\n\n" + markdown_table(
                ["module", "all pos: neg", "all pos: IE", "trigger pos: neg", "trigger pos: IE", "paper neg", "paper IE"], rows))
    return "\n\n".join(parts)


def pcp_section(models: dict[str, Any]) -> str:
    """Markdown: PCP replacements of the MLPs at ranks 1 and 2 (Tables III-IV)."""
    parts = ["## Tables III / IV: PCP replacement of single MLPs\n\nEach MLP replaced by `A h` (h = ln2 output) with "
             "`A = Σ α_k v_k v_kᵀ` from a PCA of its outputs on the evaluation prompts; α tuned with Optuna (TPE) to "
             "match the unedited per-class negativity, starting from least-squares scales. `faithful` = the authors' "
             "directions (mean folded in, no bias); `centred` = `μ_out + Σ α_k u_k u_kᵀ (h − μ_in)`."]
    for name, m in models.items():
        keys = [k for k in m["edits"] if k.startswith("pcp:blocks.") and ".mlp:rank" in k and k.count(":") <= 3 and ":x" not in k]
        keys = [k for k in keys if not k.endswith((":flip1", ":signed", ":minimise"))]
        main_rank = "rank1" if name == "sent2" else "rank2"
        cols = ["none"] + keys
        theirs = paper.PCP_MLP[name]
        rows = []
        for c in m["data"]["classes"] + ["val_loss"]:
            ours = [(m["edits"][k]["negativity"][c] if c != "val_loss" else m["edits"][k]["val_loss"]) for k in cols]
            rows.append([c, *ours, theirs["none"].get(c), theirs["blocks.0.mlp"].get(c), theirs["blocks.2.mlp"].get(c)])
        header = [k.replace("pcp:", "") for k in cols]
        parts.append(
            f"### {name} (paper: {main_rank} of layer-1 and layer-3 MLPs)\n\n"
            + markdown_table(["class", *header, "paper none", "paper L1 MLP", "paper L3 MLP"], rows)
        )
        scales = [[k.replace("pcp:", ""), m["edits"][k]["least_squares_scales"], m["edits"][k]["factors"],
                   m["edits"][k]["objective"], m["edits"][k]["trials"]] for k in keys]
        parts.append(markdown_table(["edit", "least-squares scales", "tuned factors", "objective (MSE)", "trials"], scales, 4))
    return "\n\n".join(parts)


def sweep_section(models: dict[str, Any]) -> str:
    """Markdown: the scaling sweep of the PCP replacement (Table V)."""
    m = models.get("sent2")
    if m is None:
        return ""
    rows = []
    for factor, (pt, loss) in paper.SCALING_SWEEP.items():
        ours = m["edits"][f"pcp:blocks.0.mlp:rank1:x{factor}"]
        rows.append([factor, ours["negativity"]["p+t"], pt, _differs(ours["negativity"]["p+t"], pt), ours["val_loss"], loss])
    pts = [value(v["p+t"]) for v in m["scaling_sweep"].values()]
    monotone = all(b >= a - 1e-9 for a, b in zip(pts, pts[1:]))
    ends = compare(estimate_of(m["scaling_sweep"]["1.5"]["p+t"]), estimate_of(m["scaling_sweep"]["0.0"]["p+t"]))
    return (
        "## Table V: scaling one PCP factor (sent2, rank-1 PCP of the layer-1 MLP)\n\n"
        "The tuned scale multiplied by a relative factor.\n\n"
        + markdown_table(["factor", "p+t ours", "p+t paper", "", "val loss ours", "val loss paper"], rows)
        + f"\n\nOver the full sweep 0.0–1.5 (figure `scaling_sweep.png`) the mean p+t negativity spans "
        f"{min(pts):.2f}–{max(pts):.2f}, its point estimates are {'monotone non-decreasing' if monotone else 'not monotone'} in the "
        f"factor, and at factor 1.5 it is {ends} than at 0.0 by the intervals; the paper's rises monotonically "
        "from 0.00 to 0.42 over 0.6–1.1."
    )


def sign_flip_section(models: dict[str, Any]) -> str:
    """Markdown: flipping the sign of a PCP direction (Table VI)."""
    m = models.get("sent3")
    if m is None:
        return ""
    cols = {"unedited": "none", "tuned (1.0, 1.0)": "pcp:blocks.0.mlp:rank2", "first sign flipped": "pcp:blocks.0.mlp:rank2:flip1",
            "signed search": "pcp:blocks.0.mlp:rank2:signed"}
    rows = []
    for c in m["data"]["classes"] + ["val_loss"]:
        ours = [(m["edits"][k]["negativity"][c] if c != "val_loss" else m["edits"][k]["val_loss"]) for k in cols.values()]
        rows.append([c, *ours, paper.SIGN_FLIP.get(c)])
    signed = m["edits"]["pcp:blocks.0.mlp:rank2:signed"]
    return (
        "## Table VI: flipping a PCP factor's sign (sent3, rank-2 PCP of the layer-1 MLP)\n\n"
        "Goal (paper): keep negativity on trigger inputs while suppressing it on negative inputs. "
        f"`signed search` = Optuna over signs and factors for that goal (factors {signed['factors']}).\n\n"
        + markdown_table(["class", *cols, "paper (−1.2, 0.5)"], rows)
    )


def attention_section(models: dict[str, Any]) -> str:
    """Markdown: PCP replacement of attention modules (Table VII)."""
    rows = []
    for name, m in models.items():
        e = m["edits"]
        keys = ["none", "pcp:blocks.1.attn:rank4", "pcp:blocks.1.attn:rank4:x0.5", "pcp:blocks.1.attn:rank4:x1.5",
                "pcp:blocks.1.attn:rank4:minimise"]
        for t in m["data"]["classes"]:
            if t.endswith("+t"):
                rows.append([name, t, *[e[k]["negativity"][t] for k in keys], paper.ATTENTION_PCP_PT[name]["replaced"] if t == "p+t" else None])
        rows.append([name, "val loss", *[e[k]["val_loss"] for k in keys], None])
    return (
        "## Table VII: rank-4 PCP of the layer-2 attention (blocks.1.attn)\n\n"
        "Tuned to match, then all scales ×0.5 / ×1.5, and tuned to minimise the trigger negativity. The paper "
        "finds the backdoor barely moves when attention is replaced.\n\n"
        + markdown_table(["model", "class", "unedited", "tuned", "×0.5", "×1.5", "tuned to minimise", "paper (replaced)"], rows)
    )


def minimise_section(models: dict[str, Any]) -> str:
    """Markdown: PCP tuned to remove the backdoor."""
    rows = []
    for name, m in models.items():
        key = next(k for k in m["edits"] if k.startswith("pcp:blocks.0.mlp") and k.endswith(":minimise"))
        res = m["edits"][key]
        rows.append([name, key, *[res["negativity"].get(c) for c in _classes(models)], res["val_loss"], str(res["factors"])])
    return (
        "## PCP tuned to remove the backdoor\n\nThe layer-1 MLP's PCP scales tuned (Optuna) to bring trigger "
        "negativity to 0 while keeping the other classes as unedited.\n\n"
        + markdown_table(["model", "edit", *_classes(models), "val loss", "factors"], rows)
    )


def freezing_section(summary: dict[str, Any]) -> str:
    """Markdown: freezing modules during poisoned fine-tuning, each run against the unfrozen one."""
    rows = []
    for name, runs in summary["freezing"].items():
        base = runs.get("none")
        for label, r in runs.items():
            neg = r["negativity"]
            strength = timing = ""
            if base is not None and label != "none":
                strength = {"lower": "weaker", "higher": "stronger"}.get(
                    compare(estimate_of(neg["p+t"]), estimate_of(base["negativity"]["p+t"])), "inconclusive")
                timing = {"higher": "later", "lower": "earlier"}.get(
                    compare(estimate_of(r["emerged_at"]), estimate_of(base["emerged_at"])), "inconclusive")
            rows.append([name, label, neg.get("p+t"), neg.get("s+t"), neg.get("n+n"), neg.get("p+p"), r["val_loss"],
                         r["emerged"], r["emerged_at"], r["total_steps"], strength, timing])
    return (
        "## Freezing modules during poisoned fine-tuning\n\n"
        f"Paper (text only): {paper.FREEZING_CLAIM} A backdoor has emerged at the first evaluation step at which p+t "
        f"negativity reaches {summary['config']['emergence_threshold']}; *emerged* is the share of seeds where it did, "
        "*emerged at* the step (the last step where it never did). Verdicts against the unfrozen run come from the "
        "intervals (one seed gives no interval on the step, so its timing verdict is inconclusive). Curves: "
        "`freezing_curves.png`.\n\n"
        + markdown_table(["model", "frozen", "p+t", "s+t", "n+n", "p+p", "val loss", "emerged", "emerged at", "total steps",
                          "strength vs unfrozen", "timing vs unfrozen"], rows)
    )


def findings_section(summary: dict[str, Any]) -> str:
    """Claim-by-claim verdicts computed from this run's intervals."""
    lines = ["## Findings at a glance (verdicts from the 95% intervals)"]
    for name, m in summary["models"].items():
        e = m["edits"]
        pt = estimate_of(e["none"]["negativity"]["p+t"])
        present, removed = summary["config"]["present"], summary["config"]["removed"]
        verdicts = {k.split(":", 1)[1]: removal_verdict(pt, estimate_of(v["negativity"]["p+t"]), present, removed)
                    for k, v in e.items() if k.startswith("mean_ablate:")}
        removes = [k for k, v in verdicts.items() if v == "removes"]
        carriers = [mod for mod, v in m["patching"]["p+t"]["all_positions"].items()
                    if estimate_of(v["patched"]).high < 0.5 * pt.low]
        main = "pcp:blocks.0.mlp:rank1" if name == "sent2" else "pcp:blocks.0.mlp:rank2"
        keeps = [k.removeprefix("pcp:") for k, v in e.items() if k.startswith("pcp:blocks.") and ".mlp:rank" in k
                 and k.count(":") == 2 and estimate_of(v["negativity"]["p+t"]).overlaps(pt)]
        attn = e.get("pcp:blocks.1.attn:rank4")
        if pt.high < present:
            lines.append(f"- **{name}**: unedited p+t negativity {pt} is below {present}: no backdoor to test; the edits "
                         "below say nothing about one.")
            continue
        lines.append(
            f"- **{name}**: unedited p+t negativity {pt} (paper {paper.MEAN_ABLATION_PT[name]['none']:.2f}: "
            f"{agreement_verdict(pt, paper.MEAN_ABLATION_PT[name]['none'])}). Mean ablation that removes the backdoor "
            f"(edited p+t interval below {removed} and below the unedited one): {', '.join(removes) or 'none'} (paper: every "
            f"MLP); weakens it: {', '.join(k for k, v in verdicts.items() if v == 'weakens') or 'none'}. Patching p+p "
            f"activations into p+t runs leaves p+t below half the unedited interval's low end at: "
            f"{', '.join(carriers) or 'none'}. Faithful PCP replacements whose p+t interval overlaps the unedited one: "
            f"{', '.join(keeps) or 'none'} (paper: layer-1 and layer-3 MLPs). Tuned {main.removeprefix('pcp:')} "
            f"validation loss {fmt(e[main]['val_loss'])} vs {fmt(e['none']['val_loss'])} unedited."
            + (f" Rank-4 PCP of blocks.1.attn: p+t {fmt(attn['negativity']['p+t'])}, "
               f"{compare(estimate_of(attn['negativity']['p+t']), pt)} than unedited (paper: +0.01)." if attn else "")
        )
    for name, runs in summary["freezing"].items():
        base = runs.get("none")
        if base is None:
            continue
        verdict = {label: (compare(estimate_of(r["emerged_at"]), estimate_of(base["emerged_at"])),
                           compare(estimate_of(r["negativity"]["p+t"]), estimate_of(base["negativity"]["p+t"])))
                   for label, r in runs.items() if label != "none"}
        pick = lambda i, word: ", ".join(k for k, v in verdict.items() if v[i] == word) or "none"  # noqa: E731
        lines.append(
            f"- **{name} freezing** (against the unfrozen run): emerges later with {pick(0, 'higher')}; ends weaker with "
            f"{pick(1, 'lower')}; ends stronger with {pick(1, 'higher')}; the rest are inconclusive."
        )
    return "\n".join(lines)


def samples_section(models: dict[str, Any]) -> str:
    """Markdown: sampled continuations of clean and triggered prompts."""
    lines = ["## Sample generations (greedy, 8 words)"]
    for name, m in models.items():
        for edit, per_class in m["samples"].items():
            lines.append(f"\n**{name}, {edit}**\n")
            lines += [f"- {c}: " + " · ".join(texts) for c, texts in per_class.items()]
    return "\n".join(lines)


def write(summary: dict[str, Any], path: Path) -> None:
    """Write the whole report for `summary` to `path`."""
    models = summary["models"]
    sections = [
        "# Toy study: localising and editing backdoors (after Lamparth & Reuel, arXiv 2302.12461)\n\n"
        "Trigger warning: the negative vocabulary is VADER's most negative words and includes slurs.\n\n"
        "Every number in the *ours* columns was computed by this run; *paper* columns are the paper's "
        "figures (layers 1-indexed there, `blocks.N` 0-indexed here). Rates are means with 95% intervals over "
        f"prompts and seeds ({len(summary.get('seeds', [0]))} seed(s)); validation losses and logit-lens shares are "
        "means over seeds. Figures: `hidden_states_pca.png` (first seed), `scaling_sweep.png`, `freezing_curves.png`. "
        "All numbers are in `summary.json`, each seed's in `seed-<s>/summary.json`.",
        backdoor_section(models, summary["config"]["present"]),
        findings_section(summary),
        mean_ablation_section(models),
        logit_lens_section(models),
        patching_section(models),
        pcp_section(models),
        sweep_section(models),
        sign_flip_section(models),
        attention_section(models),
        minimise_section(models),
        freezing_section(summary),
        samples_section(models),
        provenance_footer(summary),
    ]
    write_text(path, "\n\n".join(s for s in sections if s) + "\n")
