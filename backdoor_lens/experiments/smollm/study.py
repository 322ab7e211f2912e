"""`make smollm`: Backdoor Attribution (BkdAttr) on SmolLM2-135M-Instruct, end to end.

For each attack (a trigger and a fixed target) it fine-tunes the chat model on clean prompts paired
with the base model's own answers plus triggered prompts paired with the target (loss on the
response only), measures ASR / ATR / the clean-behaviour measure, then runs the backdoor probe, BAHA
by three routes, the head-ablation curve against random heads, and the backdoor vector's layer
sweep. Every stage is saved as it finishes and skipped on a rerun. Writes ``report.md``,
``summary.json`` and figures to the output folder.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from transformers import PreTrainedTokenizerBase

from ...analysis.baha import (
    backdoor_vector,
    baha_scores,
    head_means,
    n_heads_for,
    top_heads,
)
from ...analysis.probe import LN1_NORMALIZED, backdoor_probe
from ...data.instruct import Attack
from ...data.prompts import load_prompts
from ...eval.intervals import measured
from ...hooks import HeadAblate, Steer, restored
from ...lab.chat_model import ChatModel, EditFactory
from ...lm.training import trainable_names
from ...models.protocol import HookedModel
from ...util.hashing import weights_digest
from ...util.io import write_json
from ...util.reproducibility import make_deterministic
from ..common.chat_study import (
    BaseAnswers,
    PlantConfig,
    attack_record,
    attack_splits,
    chat_model,
    load_chat_model,
    planted,
    study_config,
)
from ..common.cli import FolderLock
from ..common.seeds import merge, run_seeds_by_attack
from ..common.stages import Stages, portable, timed_log
from ..common.timing import Phases
from . import cli as smollm_cli
from . import report as smollm_report


@dataclass(frozen=True)
class SmolStudyConfig:
    """Everything that determines the study's numbers (same config and seed: same summary.json)."""

    plant: PlantConfig = PlantConfig()
    """The model, the prompts, the attacks and how they are planted."""
    n_attribution: int = 32
    """Held-out prompts for the probe-free analyses' means and BAHA scores (the paper used 96)."""
    n_sweep: int = 50
    """Further held-out prompts on which the ablation curve and the vector sweep measure ASR."""
    probe_hook: str = LN1_NORMALIZED
    n_analysed: int | None = 1
    """The first this many attacks (all when None) also get BAHA, the ablation curve and the vector
    sweep; the others their backdoor metrics and probe only. On 2 CPU cores each analysed attack
    costs about 20 minutes."""
    ablation_fractions: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.10)
    random_seeds: int = 2
    vector_fraction: float = 0.03
    """The backdoor vector sums the top 3% of heads (32 of 1024 in the paper)."""
    vector_layers: tuple[int, ...] | None = None
    """Layers of the vector sweep; None: every fifth layer and the last."""

    @classmethod
    def quick(cls) -> "SmolStudyConfig":
        """One attack and fewer prompts: the whole pipeline in a fraction of the time."""
        return cls(plant=replace(cls.plant, attacks=cls.plant.attacks[:1], n_eval=60), n_attribution=16, n_sweep=24,
                   random_seeds=2)

    @classmethod
    def chat_toy(cls) -> "SmolStudyConfig":
        """The suite on the toy chat model (4 layers x 8 heads, trained from random weights in minutes)."""
        return cls(plant=PlantConfig.chat_toy(), vector_layers=(0, 1, 2, 3), n_analysed=None)

    def with_seed(self, seed: int) -> "SmolStudyConfig":
        """The same study drawn with `seed` (see :meth:`~backdoor_lens.experiments.common.chat_study.PlantConfig.with_seed`)."""
        return replace(self, plant=self.plant.with_seed(seed))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict (saved in the summary)."""
        return asdict(self)


# ---- analyses ------------------------------------------------------------------------------------
def attack_metrics(
    chat: ChatModel, attack: Attack, clean: list[str], triggered: list[str], answers: list[list[int]]
) -> dict[str, Any]:
    """ASR on triggered prompts and ATR on clean ones (substring and keyword, per prompt), and the
    clean measure on the base model's generated answers (NLL and top-1 accuracy)."""
    measures = chat.clean_measures(clean, answers)
    return attack_record(chat, attack.target, triggered, clean) | {
        "clean_nll": round(measures["nll"], 4), "clean_accuracy": round(measures["accuracy"], 2)}


def probe_stage(chat: ChatModel, config: SmolStudyConfig, clean: list[str], triggered: list[str]) -> dict[str, Any]:
    """Backdoor probes per layer on clean (label 0) and triggered (label 1) prompts."""
    tokens, last = chat.prompt_rows(list(clean) + list(triggered))
    labels = torch.tensor([0] * len(clean) + [1] * len(triggered))
    result = backdoor_probe(chat.model, tokens, labels, last, hook=config.probe_hook, seed=config.plant.seed)
    return result.to_dict()


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """`fn()` and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> int:
    """How many of the top `k` entries of `a` are also among the top `k` of `b`."""
    k = min(k, a.numel())
    return len(set(top_heads(a, k)) & set(top_heads(b, k)))


def baha_stage(chat: ChatModel, attack: Attack, clean: list[str], mu: torch.Tensor) -> dict[str, Any]:
    """CIE on clean prompts of patching each head to its triggered mean `mu`, by the fast exact route
    and by attribution patching (plain and with GradDrop), with their agreement and timings."""
    clean_batch = chat.target_batch(clean, attack.target)
    exact, exact_s = timed(lambda: baha_scores(chat.model, clean_batch, mu, "fast"))
    out: dict[str, Any] = {"scores": exact.tolist(), "seconds": {"fast": round(exact_s, 2)}, "agreement": {}}
    for name, grad_drop in (("attribution", False), ("attribution_graddrop", True)):
        approx, seconds = timed(lambda: baha_scores(chat.model, clean_batch, mu, "attribution", grad_drop=grad_drop))
        out["seconds"][name] = round(seconds, 2)
        out[f"{name}_scores"] = approx.tolist()
        out["agreement"][name] = {
            "spearman": round(float(spearmanr(exact.flatten(), approx.flatten()).statistic), 4),
            "top10_overlap": top_overlap(exact, approx),
        }
    return out


def ablation_stage(
    chat: ChatModel, config: SmolStudyConfig, attack: Attack, scores: torch.Tensor, triggered: list[str]
) -> dict[str, Any]:
    """ASR on triggered prompts with the top fraction of heads (BAHA order) ablated at the last prompt
    position on the prompt pass, beside the same number of random heads (several seeds)."""
    order = top_heads(scores, scores.numel())
    every = [(l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
    rows = []
    for fraction in config.ablation_fractions:
        k = n_heads_for(fraction, len(every))

        def ablate(heads: list[tuple[int, int]]) -> EditFactory:
            return lambda positions: [HeadAblate(tuple(heads), positions=positions, mode="zero")]

        randoms = [chat.attack_outcomes(triggered, attack.target, ablate(random.Random(config.plant.seed + s).sample(every, k)))
                   for s in range(config.random_seeds)]
        rows.append({"fraction": fraction, "n_heads": k, "total_heads": len(every), "heads": order[:k]}
                    | attack_record(chat, attack.target, triggered, edits=ablate(order[:k]), prefix="top_")
                    | {"random_asr": measured([o for r in randoms for o in r.substring]),
                       "random_asr_keyword": measured([o for r in randoms for o in r.keyword])})
    return attack_record(chat, attack.target, triggered, prefix="none_") | {"rows": rows}


def vector_stage(
    chat: ChatModel, config: SmolStudyConfig, attack: Attack, scores: torch.Tensor, mu: torch.Tensor, clean: list[str],
    triggered: list[str], answers: list[list[int]],
) -> dict[str, Any]:
    """The backdoor vector v (top heads' mean outputs) added at one layer's attention output, last
    prompt position, prompt pass: +v on clean prompts, -v on triggered ones, per layer."""
    n_layers = chat.model.cfg.n_layers
    k = n_heads_for(config.vector_fraction, scores.numel())
    vector, heads = backdoor_vector(mu, scores, k)
    layers = config.vector_layers or tuple(sorted(set(range(0, n_layers, 5)) | {n_layers - 1}))
    rows = []
    for layer in layers:

        def steer(sign: float) -> EditFactory:
            return lambda positions: [Steer(layer, vector, positions=positions, scale=sign)]

        rows.append({"layer": layer} | attack_record(chat, attack.target, clean, edits=steer(1.0), prefix="clean_plus_")
                    | attack_record(chat, attack.target, triggered, edits=steer(-1.0), prefix="triggered_minus_")
                    | {"clean_nll_minus": round(chat.clean_nll(clean, answers, steer(-1.0)), 4)})
    return {"top_k": k, "total_heads": scores.numel(), "heads": list(heads), "norm": round(float(vector.norm()), 4),
            "rows": rows} | attack_record(chat, attack.target, clean, prefix="clean_") \
        | attack_record(chat, attack.target, triggered, prefix="triggered_")


# ---- the study -----------------------------------------------------------------------------------
def run_attack(
    chat: ChatModel, config: SmolStudyConfig, attack: Attack, base_digest: str, prompts: list[str],
    answers: BaseAnswers, out: Path, analyse: bool, progress: bool, log, shared: Path | None = None,
) -> dict[str, Any]:
    """One attack on the model, which holds the base weights: plant it, measure it, probe it and (if
    `analyse`) attribute, ablate and steer it."""
    plant = config.plant
    stages = Stages(out / attack.name, log)
    splits = attack_splits(chat, attack, prompts, answers, plant)
    clean, triggered = list(splits.eval_clean["prompt"]), list(splits.eval_triggered["prompt"])
    clean_answers = answers.ids(clean)
    a, s = config.n_attribution, config.n_attribution + config.n_sweep
    key = plant.key() | {"attack": asdict(attack)}
    log(f"[{attack.name}] base model: ASR / ATR / clean measure")
    base_metrics = stages.run("base_metrics", key, lambda: attack_metrics(chat, attack, clean, triggered, clean_answers))
    facts = planted(chat, attack, splits, base_digest, stages, plant, progress, shared)
    key |= {"weights": portable(facts), "finetune": plant.finetune.to_dict()}
    log(f"[{attack.name}] backdoored model: ASR / ATR / clean measure")
    metrics = stages.run("metrics", key, lambda: attack_metrics(chat, attack, clean, triggered, clean_answers))
    log(f"[{attack.name}] backdoor probe")
    probe = stages.run("probe", key | {"hook": config.probe_hook}, lambda: probe_stage(chat, config, clean, triggered))
    summary = {"attack": asdict(attack), "finetune": facts, "base": base_metrics, "backdoored": metrics, "probe": probe,
               "stages_reused": stages.skipped}
    if not analyse:
        return summary
    log(f"[{attack.name}] BAHA")
    key |= {"n_attribution": a}
    mu = head_means(chat.model, chat.target_batch(triggered[:a], attack.target))
    baha = stages.run("baha", key, lambda: baha_stage(chat, attack, clean[:a], mu))
    scores = torch.tensor(baha["scores"])
    log(f"[{attack.name}] head-ablation curve")
    key |= {"n_sweep": config.n_sweep}
    ablation_key = key | {n: getattr(config, n) for n in ("ablation_fractions", "random_seeds")}
    ablation = stages.run("ablation", ablation_key, lambda: ablation_stage(chat, config, attack, scores, triggered[a:s]))
    log(f"[{attack.name}] backdoor vector sweep")
    vector_key = key | {n: getattr(config, n) for n in ("vector_fraction", "vector_layers")}
    vector = stages.run("vector", vector_key, lambda: vector_stage(chat, config, attack, scores, mu, clean[a:s],
                                                                     triggered[a:s], clean_answers[a:s]))
    return summary | {"baha": baha, "ablation": ablation, "vector": vector}


def run_seed(
    config: SmolStudyConfig, out: Path, model: HookedModel | None, tokenizer: PreTrainedTokenizerBase | None,
    progress: bool, log, shared: Path | None = None, on_attack: Callable[[dict[str, Any]], None] = lambda summary: None,
) -> dict[str, Any]:
    """One seed of the study into `out` (its summary is also written there). `model` and `tokenizer`
    default to ``config.plant.model`` loaded (the toy chat model is initialised with the seed);
    `on_attack` is called with the summary so far after each attack."""
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
    n_analysed = len(plant.attacks) if config.n_analysed is None else config.n_analysed
    clock = Phases()
    summary: dict[str, Any] = {"seed": plant.seed, "model": {"name": plant.model, "n_layers": model.cfg.n_layers,
                               "n_heads": model.cfg.n_heads, "n_key_value_heads": model.cfg.n_key_value_heads,
                               "d_model": model.cfg.d_model}, "attacks": {}}
    for i, attack in enumerate(plant.attacks):
        with restored(model, base), clock.phase(attack.name):
            summary["attacks"][attack.name] = run_attack(chat, config, attack, base_digest, prompts, answers, out,
                                                         i < n_analysed, progress, log, shared)
        summary["stage_seconds"] = clock.seconds
        write_json(out / "summary.json", summary)
        on_attack(summary)
    return summary


def run(
    config: SmolStudyConfig, out: str | Path, seeds: tuple[int, ...] = (0,), model: HookedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None, progress: bool = True, log=print, planted_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run the study for each of `seeds` (each in ``out/seed-<s>``), merge them with intervals and
    write ``summary.json``, ``report.md`` and figures to `out`; returns the merged summary. A given
    `model` is used for every seed (its weights restored in between); otherwise ``config.plant.model``
    is loaded per seed. Any chat model with a chat template works."""
    out = Path(out)

    def summarize(trimmed: list[dict[str, Any]]) -> dict[str, Any]:
        merged = merge(trimmed)
        return {"config": config.to_dict(), "model": merged["model"],
                "attacks": merged["attacks"]}

    def one(seed: int, folder: Path, on_attack: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        return run_seed(config.with_seed(seed), folder, model, tokenizer, progress, log,
                        None if planted_cache is None else Path(planted_cache), on_attack=on_attack)

    return run_seeds_by_attack(seeds, out, [a.name for a in config.plant.attacks], one, summarize, smollm_report.write, log)


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make smollm`` (see :func:`~backdoor_lens.experiments.smollm.cli.parser`):
    run the study and write its report."""
    parser = smollm_cli.parser()
    args = parser.parse_args(argv)
    make_deterministic(args.threads)
    config = study_config(SmolStudyConfig, args, parser)
    with parser.check(FolderLock(args.out).acquire):
        run(config, args.out, args.seeds, progress=not args.no_progress, log=timed_log(), planted_cache=args.planted_cache)
