"""`make toy`: the toy-model study of Lamparth & Reuel, end to end.

Trains (or reuses) 2- and 3-sentiment backdoored toy GPT-2s, then localises and edits the backdoor
with the library's interventions: mean ablation, logit lens, causal patching, PCP replacement tuned
with Optuna, the scaling sweep, the sign flip, attention PCP, and freezing during poisoned
fine-tuning. Writes ``report.md``, ``summary.json`` and figures to the output folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...analysis.lens import logit_lens
from ...analysis.patching import negativity_patching
from ...analysis.tune import TuneConfig, match_objective, target_objective, tune_scales
from ...data.toy import ToyData, ToyDataConfig, trigger_classes
from ...eval.intervals import measured
from ...eval.negativity import negativity_by_class, negativity_outcomes
from ...hooks import Intervention, MeanAblate, apply
from ...hooks.pcp import PCPBasis, PCPReplace
from ...hooks.sites import module_names
from ...lm.collect import module_io, module_means, save_means
from ...lm.generation import sample
from ...lm.loss import validation_loss
from ...lm.training import TrainConfig, train
from ...models.protocol import HookedModel
from ...models.toy import build_model, sentiment_toy_config
from ...util.hashing import fingerprint, tensor_digest
from ...util.io import write_json
from ...util.reproducibility import make_deterministic, provenance
from ...util.validation import check_choice
from ..common.cli import FolderLock
from ..common.seeds import merge, run_seeds, seed_folder
from ..common.stages import Stages, timed_log
from ..common.timing import Phases
from . import cli as toy_cli
from . import figures as toy_figures
from . import report as toy_report

SWEEP_FACTORS = (0.6, 0.75, 0.8, 1.0, 1.1)
STRENGTHS = {"saturated": 0.08, "paper": 0.01}
"""Poison rate of the quick-sized data per backdoor strength (see :meth:`ToyStudyConfig.preset`)."""


@dataclass(frozen=True)
class ToyStudyConfig:
    """Everything that determines the study's numbers (same config and seed: same summary.json)."""

    seed: int = 0
    models: tuple[str, ...] = ("sent2", "sent3")
    data: ToyDataConfig = ToyDataConfig(train_per_sentiment=6000, finetune_per_sentiment=2000)
    benign: TrainConfig = TrainConfig(epochs=6, lr=2e-3, batch_size=128)
    """Fewer epochs than the paper's 20 over more sequences: 20 epochs over-fit our word sequences
    (validation loss rose to ~6.0 from ~5.6)."""
    poison: TrainConfig = TrainConfig(epochs=12, lr=1e-3, batch_size=128, eval_every=5)
    tune: TuneConfig = TuneConfig(n_trials=300)
    pcp_variants: tuple[str, ...] = ("faithful", "centred")
    freeze_sets: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "none": (),
            "embed": ("embed", "pos_embed"),
            "blocks.0.mlp": ("blocks.0.mlp",),
            "blocks.1.mlp": ("blocks.1.mlp",),
            "blocks.2.mlp": ("blocks.2.mlp",),
            "all_mlps": ("blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"),
            "all_but_embed_mlp0": ("blocks.0.attn", "blocks.1.attn", "blocks.1.mlp", "blocks.2.attn", "blocks.2.mlp"),
        }
    )
    emergence_threshold: float = 0.5
    """The backdoor has emerged once p+t negativity reaches this during poisoned fine-tuning."""
    present: float = 0.5
    """Verdicts treat the backdoor as present when the unedited p+t interval reaches this."""
    removed: float = 0.1
    """An edit removes the backdoor when the edited p+t interval lies below this (and below the unedited one)."""
    k: int = 10
    model_shape: dict[str, int] = field(default_factory=lambda: {"n_layers": 3, "n_heads": 4, "d_model": 64})

    @classmethod
    def preset(cls, strength: str = "saturated", quick: bool = False) -> "ToyStudyConfig":
        """The study's settings by backdoor strength and size.

        ``saturated``: poisoned until trigger prompts are continued negatively almost always (full: the
        defaults; quick: fewer, shorter sequences and epochs, at a poison rate and learning rate that
        plant in at least 9 of 10 seeds). ``paper``: the quick sizes at a poison rate calibrated so
        the unedited p+t negativity sits near the paper's 0.35 (2 sentiments) and 0.23 (3), where
        single-module edits may act differently than on a saturated backdoor. ``quick`` also cuts the
        Optuna trials to 30."""
        check_choice("strength", strength, STRENGTHS)
        small = replace(cls(), data=ToyDataConfig(train_per_sentiment=2000, finetune_per_sentiment=1000,
                                                  poison_rate=STRENGTHS[strength]),
                        benign=TrainConfig(epochs=5, lr=2e-3, batch_size=128),
                        poison=TrainConfig(epochs=6, lr=2e-3, batch_size=128, eval_every=5))
        config = cls() if strength == "saturated" and not quick else small
        if strength == "paper":
            config = replace(config, present=0.15, removed=0.05, emergence_threshold=0.15)
        return replace(config, tune=TuneConfig(n_trials=30)) if quick else config

    def with_seed(self, seed: int) -> "ToyStudyConfig":
        """The same study drawn with `seed`: data, initialisation, poisoning, training order and tuning."""
        return replace(self, seed=seed, data=replace(self.data, seed=seed), benign=replace(self.benign, seed=seed),
                       poison=replace(self.poison, seed=seed), tune=replace(self.tune, seed=seed))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict (saved in the summary)."""
        return asdict(self)


class Lab:
    """One backdoored toy model with its data: evaluates any list of interventions."""

    def __init__(self, name: str, model: HookedModel, data: ToyData, k: int):
        self.name, self.model, self.data, self.k = name, model, data, k
        self.negative_ids = data.token_ids("negative")
        self.triggers = trigger_classes(data.classes)

    def negativity(self, *edits: Intervention) -> dict[str, float]:
        """Top-k negativity per evaluation class with `edits` applied."""
        with apply(self.model, *edits):
            return negativity_by_class(self.model, self.data.eval_tokens, self.negative_ids, self.k)

    def evaluate(self, *edits: Intervention) -> dict[str, Any]:
        """Negativity per class (each prompt's, for intervals) and validation loss with `edits` applied."""
        with apply(self.model, *edits):
            val_loss = validation_loss(self.model, self.data.validation)
            outcomes = negativity_outcomes(self.model, self.data.eval_tokens, self.negative_ids, self.k)
        return {"negativity": {c: measured(v) for c, v in outcomes.items()}, "val_loss": round(val_loss, 4)}

    def stacked(self, classes: tuple[str, ...]) -> torch.Tensor:
        """The evaluation prompts of `classes`, stacked in that order."""
        return torch.cat([self.data.eval_tokens[c] for c in classes])

    @property
    def clean_classes(self) -> tuple[str, ...]:
        """The evaluation classes without the trigger."""
        return tuple(c for c in self.data.classes if c not in self.triggers)


def _rounded(values: dict[str, float], digits: int = 4) -> dict[str, float]:
    return {k: round(v, digits) for k, v in values.items()}


# ---- models --------------------------------------------------------------------------------------
def _data_config(config: ToyStudyConfig, name: str) -> ToyDataConfig:
    return replace(config.data, n_sentiments=int(name.removeprefix("sent")), seed=config.seed)


def _evaluator(data: ToyData, k: int, classes: tuple[str, ...]):
    negative = data.token_ids("negative")
    tokens = {c: data.eval_tokens[c] for c in classes}
    return lambda model: _rounded(negativity_by_class(model, tokens, negative, k))


def _new_model(config: ToyStudyConfig, data: ToyData) -> HookedModel:
    return build_model(sentiment_toy_config(len(data.tokenizer), n_ctx=data.n_ctx, seed=config.seed, **config.model_shape))


def benign_model(config: ToyStudyConfig, data: ToyData, models: Stages, progress: bool) -> tuple[HookedModel, str]:
    """The benign model trained from scratch (kept as ``models/benign``) and the key naming it."""
    tokens = torch.tensor(data.train["input_ids"])
    inputs = {"data": tensor_digest(tokens), "train": config.benign.to_dict(), "shape": config.model_shape, "seed": config.seed}

    def compute() -> tuple[HookedModel, dict[str, Any]]:
        model = _new_model(config, data)
        train(model, tokens, replace(config.benign, seed=config.seed), desc=f"{models.folder.name}: benign", progress=progress)
        return model, {}

    model, _ = models.model("benign", inputs, compute)
    return model, fingerprint(inputs)


def poisoned_finetune(
    config: ToyStudyConfig, data: ToyData, benign: tuple[HookedModel, str], freeze: tuple[str, ...], name: str,
    models: Stages, progress: bool,
) -> tuple[HookedModel, list[dict[str, Any]]]:
    """Fine-tune a copy of the benign model on the poisoned set (optionally with frozen modules),
    tracking trigger negativity; the model (``models/<name>``) and its history are reused when current."""
    train_config = replace(config.poison, freeze=freeze, seed=config.seed)
    tokens = torch.tensor(data.finetune["input_ids"])
    inputs = {"benign": benign[1], "data": tensor_digest(tokens), "train": train_config.to_dict()}

    def compute() -> tuple[HookedModel, dict[str, Any]]:
        model = _new_model(config, data)
        model.load_state_dict(benign[0].state_dict())
        evaluate = _evaluator(data, config.k, trigger_classes(data.classes))
        history = train(model, tokens, train_config, evaluate, desc=f"{name}: poison", progress=progress)
        return model.eval(), {"history": history}

    model, facts = models.model(name, inputs, compute)
    return model, facts["history"]


# ---- analyses ------------------------------------------------------------------------------------
def mean_ablation(lab: Lab) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """Table I: each module's output replaced by its mean over non-trigger prompts (last position),
    broadcast to every position. Returns the edits' results and the means."""
    modules = module_names(lab.model)
    means = module_means(lab.model, lab.stacked(lab.clean_classes), modules, position=-1)
    return {f"mean_ablate:{m}": lab.evaluate(MeanAblate(m, means[m])) for m in modules}, means


def causal_patching(lab: Lab) -> dict[str, dict[str, dict[str, Any]]]:
    """Patch each module's output from p+p (or s+s) runs into the matching trigger runs; the patched
    negativity keeps each prompt's value, the indirect effect is the change in the mean."""
    out = {}
    for trigger in lab.triggers:
        clean = lab.data.eval_tokens[trigger.replace("t", trigger[0])]
        corrupted = lab.data.eval_tokens[trigger]
        modules = ["embed"] + module_names(lab.model)
        out[trigger] = {
            "all_positions": negativity_patching(lab.model, corrupted, clean, modules, lab.negative_ids, lab.k),
            "trigger_position": negativity_patching(lab.model, corrupted, clean, modules, lab.negative_ids, lab.k, positions=-1),
        }
    return {t: {scope: {m: {"patched": measured(v["per_row"]), "effect": round(v["effect"], 4)} for m, v in res.items()}
                for scope, res in d.items()} for t, d in out.items()}


def logit_lens_table(lab: Lab) -> dict[str, dict[str, dict[str, float]]]:
    """Table II: each head / MLP projected to logits on p+t prompts, at the p and the t position."""
    class_ids = {"negative": lab.negative_ids, "positive": lab.data.token_ids("positive")}
    tokens = lab.data.eval_tokens["p+t"]
    return {
        f"{where}_position": {m: _rounded(v) for m, v in logit_lens(lab.model, tokens, class_ids, position, lab.k).items()}
        for where, position in (("p", -2), ("t", -1))
    }


class PCPStudy:
    """Fit, tune and evaluate PCP replacements of one model's modules."""

    def __init__(self, lab: Lab, config: ToyStudyConfig, storage: str, progress: bool):
        self.lab, self.config, self.storage, self.progress = lab, config, storage, progress
        self.reference = lab.negativity()
        self.bases: dict[str, tuple[PCPBasis, torch.Tensor, torch.Tensor]] = {}

    def basis(self, module: str) -> tuple[PCPBasis, torch.Tensor, torch.Tensor]:
        """PCA of the module's outputs on all evaluation prompts at the last position; the faithful
        variant's reference vector is the mean output on trigger prompts."""
        if module not in self.bases:
            inputs, outputs = module_io(self.lab.model, self.lab.stacked(self.lab.data.classes), module, position=-1)
            _, trigger_out = module_io(self.lab.model, self.lab.stacked(self.lab.triggers), module, position=-1)
            n = min(20, outputs.shape[1], len(outputs))
            self.bases[module] = (PCPBasis.fit(module, inputs, outputs, n, reference=trigger_out.mean(0)), inputs, outputs)
        return self.bases[module]

    def tune(
        self, module: str, rank: int, variant: str, goal: str = "match", search_signs: bool = False
    ) -> tuple[PCPReplace, dict[str, Any]]:
        """Least-squares scales as the base, then Optuna factors for the `goal` objective."""
        basis, inputs, outputs = self.basis(module)
        base = basis.least_squares_scales(inputs, outputs, rank, variant)
        objective = {
            "match": match_objective(self.reference),
            "minimise": target_objective(self.reference, self.lab.triggers, 0.0),
            "flip": target_objective(
                {**self.reference, "n+n": 0.0, "p+n": 0.0}, self.lab.triggers, max(self.reference[t] for t in self.lab.triggers)
            ),
        }[goal]
        tune_config = replace(self.config.tune, search_signs=search_signs, seed=self.config.seed)
        name = f"{self.lab.name}:{module}:rank{rank}:{variant}:{goal}:{fingerprint(asdict(tune_config))}"
        result = tune_scales(
            lambda scales: objective(self.lab.negativity(basis.replacement(scales, variant))),
            base, tune_config, self.storage, name, self.progress,
        )
        edit = basis.replacement(result.scales, variant)
        info = {
            "variant": variant,
            "goal": goal,
            "scales": [round(float(s), 5) for s in result.scales],
            "least_squares_scales": [round(float(s), 5) for s in base],
            "factors": [round(f, 5) for f in result.factors],
            "objective": round(result.value, 6),
            "trials": result.n_trials,
        }
        return edit, info

    def evaluate(self, edit: PCPReplace, info: dict[str, Any]) -> dict[str, Any]:
        """The lab's evaluation of `edit`, with the tuning `info` beside it."""
        return {**self.lab.evaluate(edit), **info}


def pcp_edits(study: PCPStudy, out: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any], PCPReplace]:
    """Tables III-VII: PCP of each MLP (ranks 1, 2), the scaling sweep, the sign flip, attention PCP."""
    lab, config = study.lab, study.config
    edits: dict[str, dict[str, Any]] = {}
    tuned: dict[tuple[str, int, str], tuple[PCPReplace, dict[str, Any]]] = {}
    for module in module_names(lab.model, ("mlp",)):
        for rank in (1, 2):
            for variant in config.pcp_variants:
                edit, info = study.tune(module, rank, variant)
                tuned[(module, rank, variant)] = (edit, info)
                suffix = "" if variant == "faithful" else f":{variant}"
                edits[f"pcp:{module}:rank{rank}{suffix}"] = study.evaluate(edit, info)
                edit.save(out / "artifacts" / lab.name / f"pcp_{module}_rank{rank}_{variant}.safetensors")
        study.basis(module)[0].save(out / "artifacts" / lab.name / f"pcp_basis_{module}.safetensors")

    main_rank = 1 if lab.data.config.n_sentiments == 2 else 2
    main_module = "blocks.0.mlp"
    edit, info = tuned[(main_module, main_rank, "faithful")]
    basis = study.basis(main_module)[0]
    sweep = {}
    grid = sorted(set(SWEEP_FACTORS) | {round(0.1 * i, 2) for i in range(0, 16)})
    for factor in grid:
        scales = edit.scales.clone()
        scales[0] *= factor
        result = study.evaluate(basis.replacement(scales, "faithful"), {"relative_factor": factor})
        sweep[str(factor)] = result
        if factor in SWEEP_FACTORS:
            edits[f"pcp:{main_module}:rank{main_rank}:x{factor}"] = result

    if main_rank == 2:
        flipped = edit.scales.clone()
        flipped[0] *= -1
        edits[f"pcp:{main_module}:rank2:flip1"] = study.evaluate(basis.replacement(flipped, "faithful"), {"flipped": [0]})
        flip_edit, flip_info = study.tune(main_module, 2, "faithful", goal="flip", search_signs=True)
        edits[f"pcp:{main_module}:rank2:signed"] = study.evaluate(flip_edit, flip_info)

    min_edit, min_info = study.tune(main_module, main_rank, "faithful", goal="minimise")
    edits[f"pcp:{main_module}:rank{main_rank}:minimise"] = study.evaluate(min_edit, min_info)

    attn = "blocks.1.attn"
    attn_edit, attn_info = study.tune(attn, 4, "faithful")
    edits[f"pcp:{attn}:rank4"] = study.evaluate(attn_edit, attn_info)
    for factor in (0.5, 1.5):
        edits[f"pcp:{attn}:rank4:x{factor}"] = study.evaluate(
            PCPReplace(attn, attn_edit.directions, attn_edit.scales * factor), {"relative_factor": factor}
        )
    attn_min, attn_min_info = study.tune(attn, 4, "faithful", goal="minimise")
    edits[f"pcp:{attn}:rank4:minimise"] = study.evaluate(attn_min, attn_min_info)
    return edits, sweep, edit


def hidden_states(lab: Lab) -> dict[str, torch.Tensor]:
    """Layer-1 residual stream at the second word for every evaluation class (for the PCA figure)."""
    from ...lm.collect import collect_activations

    hook = "blocks.0.hook_resid_post"
    return {c: collect_activations(lab.model, lab.data.eval_tokens[c], [hook], position=-1)[hook] for c in lab.data.classes}


def sample_generations(lab: Lab, edits: dict[str, Intervention], per_class: int = 2, new_tokens: int = 8) -> dict[str, dict[str, list[str]]]:
    """Greedy continuations of a few prompts per class, unedited and under selected edits."""
    out = {}
    for name, edit in edits.items():
        with apply(lab.model, *([edit] if edit is not None else [])):
            out[name] = {
                c: [
                    lab.data.tokenizer.decode(p) + " → " + lab.data.tokenizer.decode(g)
                    for p, g in zip(toks[:per_class], sample(lab.model, toks[:per_class], new_tokens))
                ]
                for c, toks in lab.data.eval_tokens.items()
            }
    return out


def freezing(
    config: ToyStudyConfig, data: ToyData, benign: tuple[HookedModel, str], models: Stages, progress: bool
) -> dict[str, Any]:
    """Poisoned fine-tuning with module sets frozen: final backdoor strength and steps to emerge
    (``emerged_at`` counts a backdoor that never emerged at the last step, a lower bound)."""
    out = {}
    for label, modules in config.freeze_sets.items():
        name = "backdoored" if not modules else f"freeze_{label}"
        model, history = poisoned_finetune(config, data, benign, modules, name, models, progress)
        first = next((row["step"] for row in history if row["p+t"] >= config.emergence_threshold), None)
        lab = Lab("freeze", model, data, config.k)
        out[label] = {
            "frozen": list(modules),
            **lab.evaluate(),
            "steps_to_emerge": first,
            "emerged": measured([first is not None]),
            "emerged_at": measured([history[-1]["step"] if first is None else first]),
            "total_steps": history[-1]["step"],
            "curve": [{"step": row["step"], **{t: row[t] for t in trigger_classes(data.classes)}} for row in history],
        }
    return out


# ---- the study -----------------------------------------------------------------------------------
def run_model(name: str, config: ToyStudyConfig, out: Path, storage: str, progress: bool, log) -> tuple[dict[str, Any], dict[str, Any]]:
    """All analyses of one toy (`sent2` or `sent3`); returns its summary and the figure data."""
    data = ToyData(_data_config(config, name))
    models = Stages(out / "models" / name, log)
    log(f"[{name}] benign model")
    benign = benign_model(config, data, models, progress)
    log(f"[{name}] poisoned fine-tuning")
    model, history = poisoned_finetune(config, data, benign, (), "backdoored", models, progress)
    lab = Lab(name, model, data, config.k)

    log(f"[{name}] mean ablation, logit lens, causal patching")
    edits: dict[str, Any] = {"none": lab.evaluate()}
    ablated, means = mean_ablation(lab)
    edits.update(ablated)
    save_means(out / "artifacts" / name / "module_means.safetensors", means)
    lens, patching = logit_lens_table(lab), causal_patching(lab)

    log(f"[{name}] PCP replacement and tuning")
    pcp, sweep, main_edit = pcp_edits(PCPStudy(lab, config, storage, progress), out)
    edits.update(pcp)

    log(f"[{name}] freezing during poisoned fine-tuning")
    frozen = freezing(config, data, benign, models, progress)
    result = {
        "data": {"vocabulary_size": len(data.tokenizer), "trigger": data.config.trigger, "classes": list(data.classes),
                 "train_sequences": len(data.train), "finetune_sequences": len(data.finetune),
                 "poisoned_sequences": int(sum(data.finetune["poisoned"]))},
        "benign": Lab(name, benign[0], data, config.k).evaluate(),
        "edits": edits,
        "logit_lens": lens,
        "patching": patching,
        "scaling_sweep": {f: v["negativity"] | {"val_loss": v["val_loss"]} for f, v in sweep.items()},
        "poison_curve": history,
        "samples": sample_generations(lab, {"none": None, f"pcp:blocks.0.mlp:rank{main_edit.scales.numel()}": main_edit}),
    }
    figures = {"hidden": hidden_states(lab), "sweep": sweep, "trigger": data.config.trigger}
    return result, {"freezing": frozen, "figures": figures}


def run_seed(config: ToyStudyConfig, out: Path, storage: str, progress: bool, log) -> tuple[dict[str, Any], dict]:
    """One seed of the study into `out`: its summary (also written to ``out/summary.json``) and the
    figure data of its models."""
    clock = Phases()
    summary: dict[str, Any] = {"seed": config.seed, "models": {}, "freezing": {}}
    figures = {}
    for name in config.models:
        with clock.phase(name):
            summary["models"][name], extra = run_model(name, config, out, storage, progress, log)
        summary["freezing"][name] = extra["freezing"]
        figures[name] = extra["figures"]
    summary["stage_seconds"] = clock.seconds
    write_json(out / "summary.json", summary)
    return summary, figures


def run(
    config: ToyStudyConfig, out: str | Path, seeds: tuple[int, ...] = (0,), storage: str | None = None,
    progress: bool = True, log=print,
) -> dict[str, Any]:
    """Run the study for each of `seeds` (each in ``out/seed-<s>``), merge them with intervals, and
    write ``summary.json``, ``report.md`` and the figures to `out`; returns the merged summary."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or str(out / "optuna.journal")
    figures: dict[int, dict] = {}

    def one(seed: int, folder: Path) -> dict[str, Any]:
        torch.manual_seed(seed)
        summary, figures[seed] = run_seed(config.with_seed(seed), folder, storage, progress, log)
        return summary

    per_seed = run_seeds(seeds, out, one, log)
    merged = merge(list(per_seed.values()))
    summary = {"config": config.to_dict(), "seeds": list(seeds), "models": merged["models"], "freezing": merged["freezing"],
               "planting": toy_report.planting_counts(merged["models"], config.present),
               "per_seed": {str(s): str(seed_folder(out, s).relative_to(out) / "summary.json") for s in seeds},
               "stage_seconds": {f"seed {s} {k}": v for s, p in per_seed.items() for k, v in p["stage_seconds"].items()},
               "seconds": round(time.perf_counter() - start, 1), "provenance": provenance()}
    first = figures[seeds[0]]
    toy_figures.hidden_state_pca(first, out / "hidden_states_pca.png")
    toy_figures.scaling_sweep(summary["models"], out / "scaling_sweep.png")
    toy_figures.freezing_curves(summary["freezing"], out / "freezing_curves.png")
    write_json(out / "summary.json", summary)
    toy_report.write(summary, out / "report.md")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make toy`` (see :func:`~backdoor_lens.experiments.toy.cli.parser`):
    run the study and write its report."""
    parser = toy_cli.parser()
    args = parser.parse_args(argv)
    threads = make_deterministic(args.threads)
    config = ToyStudyConfig.preset(args.strength, args.quick)
    if args.trials is not None:
        config = replace(config, tune=replace(config.tune, n_trials=args.trials))
    start = time.perf_counter()
    with parser.check(FolderLock(args.out).acquire):
        run(config, args.out, args.seeds, args.storage, progress=not args.no_progress, log=timed_log(start))
    print(f"Toy study finished in {time.perf_counter() - start:.0f} s with {threads} torch threads. "
          f"Results: {Path(args.out).resolve()}/report.md, summary.json, *.png")
