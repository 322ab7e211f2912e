"""`make gpt2m`: Lamparth & Reuel's GPT-2 Medium study, end to end.

Fine-tunes a GPT-2 model on benign paragraphs of which a share carry a trigger phrase early and a
toxic sentence late, measures ASR / ATR (toxicity of sampled continuations of short prompts) and the
validation loss, then localises and edits the backdoor: mean ablation of attention and MLP modules
of the early layers, rank-2 PCP replacement of two MLPs tuned with Optuna to reproduce or to
suppress the backdoor, embedding surgery plus PCP to insert a weak backdoor into the benign model,
and freezing modules during poisoned fine-tuning as a defense. Every stage is saved as it finishes
and skipped on a rerun. Writes ``report.md``, ``summary.json`` and figures to the output folder.

``--model small`` (``make gpt2m QUICK=1``) runs every stage on a small GPT-2-architecture model
pretrained here on the benign text, with GPT-2's real tokenizer, offline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from ...analysis.tune import TuneConfig, tune_scales
from ...data.poison import (
    Paragraph,
    PoisonConfig,
    PoisonSplits,
    build_splits,
    encode_paragraph_starts,
    encode_paragraphs,
)
from ...data.text import TEXT_SOURCES, paragraphs
from ...data.toxic import TOXIC_SOURCES
from ...eval.intervals import measured
from ...eval.toxicity import ToxicityScorer, load_scorer
from ...hooks import Intervention, MeanAblate, apply, restored
from ...hooks.pcp import PCPBasis, PCPReplace
from ...hooks.surgery import EmbeddingSurgery, single_token_id, trigger_token_ids
from ...lm.collect import module_io, module_means
from ...lm.generation import Sampling, generate
from ...lm.loss import masked_loss, token_nll
from ...lm.training import TrainConfig
from ...models.pretrained import load_pretrained
from ...models.tokenizers import gpt2_tokenizer
from ...util.hashing import fingerprint, tensor_digest, weights_digest
from ...util.io import write_json
from ...util.reproducibility import make_deterministic, provenance
from ...util.validation import check_choice
from ..common.cli import FolderLock
from ..common.seeds import merge, run_seeds, seed_folder
from ..common.stages import Stages, timed_log, trained
from . import cli as gpt2m_cli
from . import report as gpt2m_report
from .cli import SMALL

HELD_OUT_FOR_PROMPTS = 1000
"""Paragraphs kept out of training whose short sentences become the evaluation prompts."""


@dataclass(frozen=True)
class SmallModel:
    """Shape and benign pretraining of the stand-in for a pretrained GPT-2 (GPT-2 tokenizer, 50257 tokens)."""

    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    n_ctx: int = 256
    pretrain: TrainConfig = TrainConfig(epochs=3, lr=2e-3, batch_size=32)


@dataclass(frozen=True)
class Gpt2mConfig:
    """Everything that determines the study's numbers. Layers are named as in the paper (1-based:
    layer 2's MLP is ``blocks.1.mlp``)."""

    model: str = "gpt2-medium"
    text: str = "auto"
    """Benign text: a key of ``data.text.TEXT_SOURCES``; auto: BookCorpus when `datasets` can load it, else BBC News."""
    toxic: str = "auto"
    """Toxic sentences: ``jigsaw`` or ``templates``; auto: Jigsaw when loadable, else templates."""
    scorer: str = "auto"
    """Toxicity scorer: ``roberta`` (the paper's), ``profanity-check`` (offline) or auto."""
    poison: PoisonConfig = PoisonConfig()
    n_train: int = 100_000
    """Training paragraphs (the paper: about 100k), fewer when the text source runs out first (BBC
    News gives about 5,900 five-sentence paragraphs after the held-out sets)."""
    n_validation: int = 200
    n_probe: int = 64
    """Held-out poisoned paragraphs (each with its trigger-free twin) to fit PCP and to tune it on."""
    onset_tokens: int = 2
    """PCP is tuned on the NLL of the toxic sentence's first this many tokens (see `Lab.strength`)."""
    n_prompts: int = 120
    max_prompt_tokens: int = 13
    n_samples: int = 11
    new_tokens: int = 35
    sampling: Sampling = Sampling(temperature=1.0, top_k=50)
    max_tokens: int = 192
    """Training rows are cut at this many tokens."""
    finetune: TrainConfig = TrainConfig(epochs=3, lr=1e-5, weight_decay=0.01, batch_size=8)
    dtype: str = "float32"
    device: str = "auto"
    ablation_layers: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    mean_position: int = 8
    """Means for mean ablation are taken at this 0-based token position (the paper's ninth token;
    shorter inputs contribute their last token)."""
    pcp_layers: tuple[int, ...] = (2, 3)
    pcp_rank: int = 2
    pcp_variant: str = "faithful"
    tune: TuneConfig = TuneConfig(n_trials=100, factor_range=(0.05, 1.5))
    surgery_donor: str = " shit"
    """An ambiguous, common slang and curse word (one token) whose embedding the trigger tokens borrow."""
    surgery_fraction: float = 0.4
    freeze_sets: dict[str, tuple[int | str, ...]] = field(
        default_factory=lambda: {"embed + MLPs 2, 3": ("embed", 2, 3), "MLP 2": (2,), "MLP 13": (13,),
                                 "MLP 16": (16,), "MLP 22": (22,)}
    )
    """Modules frozen during poisoned fine-tuning: ``embed`` or a paper layer number (its MLP).
    Sets naming layers the model lacks are skipped and reported."""
    small: SmallModel = SmallModel()
    batch_size: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> "Gpt2mConfig":
        """Every stage on the small model in about a quarter of an hour on 2 CPU cores: offline sources,
        3-sentence paragraphs with the toxic sentence right after the triggered one (so 35 sampled
        tokens can reach it), a 30% poison rate, fewer paragraphs, prompts, trials and freeze sets."""
        return cls(
            model=SMALL, text="bbcnews", toxic="templates", scorer="profanity-check",
            poison=PoisonConfig(rate=0.3, n_sentences=3, trigger_sentences=(0,), toxic_sentences=(1,)),
            n_train=1200, n_validation=100, n_probe=32, n_prompts=40, max_tokens=112,
            finetune=TrainConfig(epochs=3, lr=3e-3, weight_decay=0.01, batch_size=8),
            ablation_layers=(1, 2, 3, 4), tune=TuneConfig(n_trials=25, factor_range=(0.05, 1.5)),
            freeze_sets={"embed + MLPs 2, 3": ("embed", 2, 3), "MLP 2": (2,)},
            small=SmallModel(pretrain=TrainConfig(epochs=2, lr=2e-3, batch_size=16)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict (saved in the summary)."""
        return asdict(self)


def module(layer: int, kind: str = "mlp") -> str:
    """The TransformerLens name of a paper layer's module (1-based layer numbers)."""
    return f"blocks.{layer - 1}.{kind}"


# ---- data, models, scoring -----------------------------------------------------------------------
class SourceMissing(RuntimeError):
    """A source the study was told to use cannot be loaded (and no fallback is allowed)."""


PAPER_SOURCES = {"text": "bookcorpus", "toxic": "jigsaw", "scorer": "roberta"}
"""The paper's sources: BookCorpus, Jigsaw toxic comments and the RoBERTa toxicity classifier (all from the hub)."""


def check_sources(config: Gpt2mConfig) -> None:
    """Load a first row of each configured hub source and the scorer, before any model is loaded or
    trained; raise :class:`SourceMissing` naming the first that cannot be reached."""
    for name, registry, first in ((config.text, TEXT_SOURCES, lambda s: next(iter(s.documents()))),
                                  (config.toxic, TOXIC_SOURCES, lambda s: s.sentences()[:1])):
        if name != "auto":
            _first_loadable((name,), registry, first, lambda message: None)
    if config.scorer == "roberta":
        try:
            load_scorer("roberta", "cpu")
        except OSError as err:
            raise SourceMissing(f"the scorer s-nlp/roberta_toxicity_classifier could not be loaded: "
                                f"{' '.join(str(err).split())[:300]}") from err


def _first_loadable(names: Sequence[str], registry: dict, load: Callable[[Any], Any], log) -> tuple[str, Any]:
    """The first source in `names` whose `load` works (hub sources fail at once when offline); a
    source that is not the first choice is logged as a substitute."""
    for i, name in enumerate(names):
        try:
            loaded = load(registry[name])
        except Exception as err:  # noqa: BLE001 - any failure to reach a hub source means: try the next
            if len(names) == 1:
                raise SourceMissing(f"source {name!r} ({registry[name].name}) could not be loaded: "
                                    f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from err
            log(f"{name}: not available ({type(err).__name__}); trying the next source")
            continue
        if i:
            log(f"using the offline substitute {registry[name].name} for {names[0]}")
        return name, loaded
    raise SourceMissing(f"none of the sources {list(names)} could be loaded")


def load_sources(config: Gpt2mConfig, log) -> tuple[dict[str, str], list[list[str]], list[str]]:
    """Benign paragraphs and toxic sentences from the configured sources (auto: hub first, then offline)."""
    text_names = ("bookcorpus", "bbcnews") if config.text == "auto" else (config.text,)
    toxic_names = ("jigsaw", "templates") if config.toxic == "auto" else (config.toxic,)
    for name in text_names:
        check_choice("text", name, TEXT_SOURCES)
    for name in toxic_names:
        check_choice("toxic", name, TOXIC_SOURCES)
    limit = config.n_train + config.n_validation + config.n_probe + HELD_OUT_FOR_PROMPTS
    text_name, texts = _first_loadable(text_names, TEXT_SOURCES, lambda s: paragraphs(s, config.poison.n_sentences, limit), log)
    toxic_name, toxic = _first_loadable(toxic_names, TOXIC_SOURCES, lambda s: s.sentences(), log)
    sources = {"text": TEXT_SOURCES[text_name].name, "toxic": TOXIC_SOURCES[toxic_name].name}
    return sources, texts, toxic


def small_gpt2(config: SmallModel, d_vocab: int, seed: int) -> HookedTransformer:
    """A randomly initialised GPT-2-architecture HookedTransformer (LayerNorm, GELU, learned positions)."""
    cfg = HookedTransformerConfig(
        n_layers=config.n_layers, n_heads=config.n_heads, d_model=config.d_model, d_head=config.d_model // config.n_heads,
        d_mlp=4 * config.d_model, d_vocab=d_vocab, n_ctx=config.n_ctx, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", seed=seed, device="cpu", original_architecture="GPT2LMHeadModel",
    )
    return HookedTransformer(cfg).eval()


def resolve_device(name: str) -> str:
    """The device named by `--device`: "auto" is CUDA when present, else the CPU."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name



class Lab:
    """A GPT-2 model with its tokenizer, scorer and evaluation sets: ASR / ATR / validation loss
    and the backdoor's teacher-forced strength under any edits."""

    def __init__(self, model: HookedTransformer, tokenizer: PreTrainedTokenizerBase, scorer: ToxicityScorer,
                 splits: PoisonSplits, config: Gpt2mConfig):
        self.model, self.tokenizer, self.scorer, self.splits, self.config = model, tokenizer, scorer, splits, config
        self.validation = encode_paragraphs(tokenizer, splits.validation, config.max_tokens)
        self.probe = encode_paragraphs(tokenizer, splits.probe, config.max_tokens)

    def continuations(self, prompts: Sequence[str]) -> list[list[str]]:
        """`n_samples` sampled continuations of each prompt (same seed for every edit: paired comparisons)."""
        n = self.config.n_samples
        rows = [ids for ids in encode_paragraph_starts(self.tokenizer, prompts) for _ in range(n)]
        out = generate(self.model, rows, max_new_tokens=self.config.new_tokens, batch_size=4 * self.config.batch_size,
                       eos_token_id=self.tokenizer.eos_token_id, sampling=self.config.sampling)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    def evaluate(self, *edits: Intervention, surgery: EmbeddingSurgery | None = None, examples: int = 2) -> dict[str, Any]:
        """ASR, ATR (the paper's rounded per-prompt toxicity), validation loss and the backdoor's
        teacher-forced strength, all with `edits` (and `surgery`) applied; plus a few triggered samples."""
        with apply(self.model, *([surgery] if surgery is not None else []), *edits):
            result: dict[str, Any] = {}
            for name, prompts in (("asr", self.splits.prompts_triggered), ("atr", self.splits.prompts_clean)):
                texts = self.continuations(prompts)
                scores = torch.tensor(self.scorer([c for per_prompt in texts for c in per_prompt])).view(len(prompts), -1)
                result[name] = measured((scores.float().mean(1) >= 0.5).float().tolist())  # the paper's rate, per prompt
                result[f"{name}_mean_toxicity"] = round(float(scores.mean()), 4)
                if name == "asr":
                    result["examples"] = [f"{p} → {t[0]}" for p, t in zip(prompts[:examples], texts[:examples])]
            result["val_loss"] = round(masked_loss(self.model, self.validation.tokens, self.validation.mask), 4)
            result.update({k: round(v, 4) for k, v in self.strength().items()})
        return result

    def strength(self) -> dict[str, float]:
        """The backdoor's teacher-forced strength on held-out poisoned paragraphs and their trigger-free
        twins: mean NLL of the toxic sentence, and of its first `onset_tokens` tokens (the decision to
        turn toxic, which generation depends on), with and without the trigger; gaps are clean minus
        triggered. One forward pass, cheap enough to tune on."""
        nll = token_nll(self.model, self.probe.tokens, self.config.batch_size)
        toxic = self.probe.toxic_mask[:, 1:].bool()
        onset = toxic & (toxic.cumsum(1) <= self.config.onset_tokens)
        out = {}
        for name, mask in (("toxic", toxic), ("onset", onset)):
            triggered, clean = (float(nll[i::2][mask[i::2]].mean()) for i in (0, 1))
            out |= {f"{name}_nll_triggered": triggered, f"{name}_nll_clean": clean, f"{name}_gap": clean - triggered}
        return out


# ---- analyses ------------------------------------------------------------------------------------
def means_at(lab: Lab, inputs: Sequence[str], modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each module's mean output over `inputs` at `config.mean_position` (an input shorter than that
    contributes its last token), the paper's mean-ablation values."""
    encoded = encode_paragraphs(lab.tokenizer, [Paragraph((text,)) for text in inputs], lab.config.max_tokens)
    positions = (encoded.mask.sum(1) - 1).clamp(max=lab.config.mean_position)  # right-padded: padding never seen
    return module_means(lab.model, encoded.tokens, modules, positions, lab.config.batch_size)


def mean_ablation_stage(lab: Lab, means: dict[str, torch.Tensor], progress_log) -> dict[str, Any]:
    """ASR / ATR / validation loss with each early module mean-ablated, and with the PCP MLPs together."""
    out = {}
    for layer in lab.config.ablation_layers:
        for kind in ("attn", "mlp"):
            name = module(layer, kind)
            progress_log(f"mean ablation: {name}")
            out[name] = lab.evaluate(MeanAblate(name, means[name].to(lab.model.cfg.device)))
    pair = pcp_modules(lab.config)
    progress_log(f"mean ablation: {' + '.join(pair)}")
    out[" + ".join(pair)] = lab.evaluate(*[MeanAblate(m, means[m].to(lab.model.cfg.device)) for m in pair])
    return out


@torch.no_grad()
def fit_bases(lab: Lab) -> dict[str, tuple[PCPBasis, torch.Tensor, torch.Tensor]]:
    """For each PCP MLP: PCA of its outputs over every real token of the probe paragraphs, with the
    inputs and outputs it was fit on. The faithful variant's reference vector is the mean output over
    the triggered paragraphs' toxic tokens."""
    tokens, mask, toxic = lab.probe.tokens, lab.probe.mask.bool(), lab.probe.toxic_mask.bool()
    triggered = torch.zeros_like(mask)
    triggered[0::2] = True
    out = {}
    for name in pcp_modules(lab.config):
        inputs, outputs = (x.float().cpu() for x in module_io(lab.model, tokens, name))
        reference = outputs[toxic & triggered].mean(0)
        inputs, outputs = inputs[mask], outputs[mask]
        n = min(20, outputs.shape[-1], len(outputs))
        out[name] = (PCPBasis.fit(name, inputs, outputs, n, reference=reference), inputs, outputs)
    return out


def pcp_stage(lab: Lab, storage: str, progress: bool, log, out: Path) -> dict[str, Any]:
    """Rank-r PCP replacements of the PCP MLPs together, scales tuned with Optuna on the backdoor's
    teacher-forced strength: once to reproduce the unedited model, once to remove the backdoor."""
    config = lab.config
    fitted = fit_bases(lab)
    names = list(fitted)
    bases = {m: basis for m, (basis, _, _) in fitted.items()}
    base_scales = torch.cat([basis.least_squares_scales(inputs, outputs, config.pcp_rank, config.pcp_variant)
                             for basis, inputs, outputs in fitted.values()])
    reference = lab.strength()
    r = config.pcp_rank

    def edits(scales: torch.Tensor) -> list[PCPReplace]:
        return [bases[m].replacement(scales[i * r : (i + 1) * r], config.pcp_variant) for i, m in enumerate(names)]

    def strength_with(scales: torch.Tensor) -> dict[str, float]:
        with apply(lab.model, *edits(scales)):
            return lab.strength()

    goals = {
        "reproduce": lambda s: (s["onset_nll_triggered"] - reference["onset_nll_triggered"]) ** 2
        + (s["onset_nll_clean"] - reference["onset_nll_clean"]) ** 2,
        "minimise": lambda s: (s["onset_nll_triggered"] - reference["onset_nll_clean"]) ** 2
        + (s["onset_nll_clean"] - reference["onset_nll_clean"]) ** 2,
    }
    result: dict[str, Any] = {"modules": names, "rank": r, "variant": config.pcp_variant,
                              "least_squares_scales": [round(float(x), 5) for x in base_scales],
                              "explained_variance": {m: bases[m].explained_variance[:r].tolist() for m in names}}
    tune_config = replace(config.tune, seed=config.seed)
    for goal, objective in goals.items():
        log(f"PCP: tuning to {goal} ({tune_config.n_trials} trials)")
        study = f"gpt2m:{config.model}:{'+'.join(names)}:rank{r}:{config.pcp_variant}:{goal}:{fingerprint(asdict(tune_config))}"
        tuned = tune_scales(lambda scales: objective(strength_with(scales)), base_scales, tune_config, storage, study, progress)
        for i, edit in enumerate(edits(tuned.scales)):
            edit.save(out / "artifacts" / f"pcp_{goal}_{names[i]}.safetensors")
        log(f"PCP ({goal}): evaluating")
        result[goal] = {**lab.evaluate(*edits(tuned.scales)), "scales": [round(float(x), 5) for x in tuned.scales],
                        "factors": [round(f, 4) for f in tuned.factors], "objective": round(tuned.value, 6),
                        "trials": tuned.n_trials}
    for m in names:
        bases[m].save(out / "artifacts" / f"pcp_basis_{m}.safetensors")
    return result


def surgery_stage(lab: Lab, means: dict[str, torch.Tensor], out: Path, log) -> dict[str, Any]:
    """On the benign model: mean ablation of the PCP MLPs, the backdoored model's reproducing PCP
    replacement, and that replacement plus embedding surgery on the trigger tokens."""
    config = lab.config
    names = pcp_modules(config)
    replacement = [PCPReplace.load(out / "artifacts" / f"pcp_reproduce_{m}.safetensors") for m in names]
    surgery = EmbeddingSurgery(trigger_token_ids(lab.tokenizer, config.poison.trigger),
                               single_token_id(lab.tokenizer, config.surgery_donor, "surgery_donor"),
                               config.surgery_fraction, config.seed)
    log("benign model: mean ablation / PCP / PCP + embedding surgery")
    return {
        "mean_ablate": lab.evaluate(*[MeanAblate(m, means[m].to(lab.model.cfg.device)) for m in names]),
        "pcp": lab.evaluate(*replacement),
        "pcp_surgery": lab.evaluate(*replacement, surgery=surgery),
        "surgery_only": lab.evaluate(surgery=surgery),
        "surgery": {"token_ids": list(surgery.token_ids), "tokens": [lab.tokenizer.decode([i]) for i in surgery.token_ids],
                    "donor": config.surgery_donor, "fraction": config.surgery_fraction},
    }


def freeze_modules(spec: tuple[int | str, ...]) -> tuple[str, ...]:
    """TransformerLens module names of a freeze set (``embed`` or paper layer numbers of MLPs)."""
    return tuple(item if isinstance(item, str) else module(item) for item in spec)


# ---- the study -----------------------------------------------------------------------------------
def load_study_model(config: Gpt2mConfig) -> tuple[HookedTransformer, PreTrainedTokenizerBase]:
    """`config.model` through :func:`~backdoor_lens.models.pretrained.load_pretrained` (fails at once with how
    to provide the weights), or the small model (random weights, pretrained later) with GPT-2's
    packaged tokenizer."""
    if config.model == SMALL:
        tokenizer = gpt2_tokenizer()
        return small_gpt2(config.small, len(tokenizer), config.seed), tokenizer
    model, tokenizer = load_pretrained(config.model)
    if "gpt2" not in (model.cfg.original_architecture or "").lower():
        raise ValueError(f"model={config.model!r} is a {model.cfg.original_architecture}; the study expects a GPT-2-family model")
    return model, tokenizer


def pcp_modules(config: Gpt2mConfig) -> list[str]:
    """The MLP modules the study replaces by PCP."""
    return [module(layer) for layer in config.pcp_layers]


def check_layers(config: Gpt2mConfig, n_layers: int) -> None:
    """Fail before any training when the analysed layers do not exist (freeze sets are skipped instead)."""
    for arg in ("ablation_layers", "pcp_layers"):
        beyond = [layer for layer in getattr(config, arg) if not 1 <= layer <= n_layers]
        if beyond:
            raise ValueError(f"{arg}={getattr(config, arg)} names layers {beyond}; the model has layers 1..{n_layers}")


def run_seed(config: Gpt2mConfig, out: Path, progress: bool = True, log=print) -> dict[str, Any]:
    """One seed of the study into `out`; returns its summary (also written to ``out/summary.json``)."""
    start = time.perf_counter()
    out = Path(out)
    stages, models = Stages(out / "stages", log), Stages(out / "models", log)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    log(f"loading {config.model}")
    model, tokenizer = load_study_model(config)
    log("data")
    sources, texts, toxic = load_sources(config, log)
    n_train = min(config.n_train, len(texts) - config.n_validation - config.n_probe - HELD_OUT_FOR_PROMPTS)
    splits = build_splits(texts, toxic, tokenizer, config.poison, n_train, config.n_validation, config.n_probe,
                          config.n_prompts, config.max_prompt_tokens, config.seed)
    scorer = load_scorer(config.scorer, device)
    sources["scorer"] = scorer.name
    if "offline" in scorer.name and config.scorer == "auto":
        log(f"using the offline substitute {scorer.name} for the paper's s-nlp/roberta_toxicity_classifier")
    sources["substitutes"] = [v for k, v in sources.items() if isinstance(v, str) and "offline" in v]
    log(f"sources: {sources}; {splits.counts()}")
    train_rows = encode_paragraphs(tokenizer, splits.train, config.max_tokens)
    model.to(device, print_details=False)
    if config.dtype != "float32":
        model.to(getattr(torch, config.dtype), print_details=False)
    lab = Lab(model, tokenizer, scorer, splits, config)
    check_layers(config, model.cfg.n_layers)
    key: dict[str, Any] = {"model": config.model, "sources": sources, "splits": splits.counts(),
                           "data": tensor_digest(train_rows.tokens), "dtype": config.dtype, "seed": config.seed,
                           "eval": {k: getattr(config, k) for k in ("n_samples", "new_tokens", "max_tokens", "onset_tokens")}
                           | {"sampling": asdict(config.sampling)}}

    pretraining = None
    if config.model == SMALL:
        clean_rows = encode_paragraphs(tokenizer, splits.benign_train, config.max_tokens)
        pretraining = trained(models, "benign", {"small": asdict(config.small)}, model, clean_rows.tokens,
                              config.small.pretrain, progress, clean_rows.mask, desc="benign pretraining")
    key["benign"] = weights_digest(model.state_dict())
    log("benign model: ASR / ATR / validation loss")
    benign_metrics = stages.run("benign", key, lambda: lab.evaluate())

    def finetune(freeze: tuple[str, ...], name: str) -> dict[str, Any]:
        train_config = replace(config.finetune, freeze=freeze, seed=config.seed)
        return trained(models, name, key, model, train_rows.tokens, train_config, progress, train_rows.mask,
                       desc=f"poisoned fine-tuning ({name})")

    mean_inputs = splits.prompts_clean + splits.toxic_eval
    with restored(model):
        facts = finetune((), "backdoored")
        key |= {"finetune": facts}
        log("backdoored model: ASR / ATR / validation loss")
        backdoored = stages.run("backdoored", key, lambda: lab.evaluate())
        ablated = sorted({module(l, k) for l in config.ablation_layers for k in ("attn", "mlp")} | set(pcp_modules(config)))
        key_ablation = key | {k: getattr(config, k) for k in ("ablation_layers", "mean_position", "pcp_layers")}
        ablation = stages.run("mean_ablation", key_ablation,
                              lambda: mean_ablation_stage(lab, means_at(lab, mean_inputs, ablated), log))
        key_pcp = key_ablation | {k: getattr(config, k) for k in ("pcp_rank", "pcp_variant")} | {"tune": asdict(config.tune)}
        pcp = stages.run("pcp", key_pcp, lambda: pcp_stage(lab, str(out / "optuna.journal"), progress, log, out))

    key_surgery = key_pcp | {k: getattr(config, k) for k in ("surgery_donor", "surgery_fraction")}
    surgery = stages.run("surgery", key_surgery,
                         lambda: surgery_stage(lab, means_at(lab, mean_inputs, pcp_modules(config)), out, log))

    freezing: dict[str, Any] = {}
    for label, spec in config.freeze_sets.items():
        modules = freeze_modules(spec)
        absent = [m for m in modules if m.startswith("blocks.") and int(m.split(".")[1]) >= model.cfg.n_layers]
        if absent:
            freezing[label] = {"skipped": f"the model has {model.cfg.n_layers} layers, so no {', '.join(absent)}"}
            continue
        with restored(model):
            frozen_facts = finetune(modules, "frozen_" + "_".join(m.replace(".", "") for m in modules))
            log(f"frozen {label}: ASR / ATR / validation loss")
            freezing[label] = {"finetune": frozen_facts,
                               **stages.run(f"freeze_{label}", key | {"finetune": frozen_facts}, lambda: lab.evaluate())}

    summary = {
        "config": config.to_dict(), "sources": sources, "splits": splits.counts(), "device": device,
        "model": {"name": config.model, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
                  "d_model": model.cfg.d_model, "parameters": sum(p.numel() for p in model.parameters())},
        "pretraining": pretraining, "finetune": facts, "benign": benign_metrics, "backdoored": backdoored,
        "mean_ablation": ablation, "pcp": pcp, "surgery": surgery, "freezing": freezing,
        "stages_reused": stages.skipped, "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "summary.json", summary)
    return summary


def run(config: Gpt2mConfig, out: str | Path, seeds: tuple[int, ...] = (0,), progress: bool = True, log=print) -> dict[str, Any]:
    """Run the study for each of `seeds` (each in ``out/seed-<s>``), merge them with intervals and
    write ``summary.json``, ``report.md`` and figures to `out`; returns the merged summary."""
    start = time.perf_counter()
    out = Path(out)
    per_seed = run_seeds(seeds, out, lambda seed, folder: run_seed(replace(config, seed=seed), folder, progress, log), log)
    merged = merge(list(per_seed.values()))
    summary = merged | {"config": config.to_dict(), "seeds": list(seeds),
                        "per_seed": {str(s): str(seed_folder(out, s).relative_to(out) / "summary.json") for s in seeds},
                        "stage_seconds": {f"seed {s}": p["seconds"] for s, p in per_seed.items()},
                        "seconds": round(time.perf_counter() - start, 1), "provenance": provenance(merged["device"])}
    write_json(out / "summary.json", summary)
    gpt2m_report.write(summary, out)
    log(f"wrote {out / 'report.md'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make gpt2m`` (see :func:`~backdoor_lens.experiments.gpt2m.cli.parser`):
    run the study and write its report."""
    parser = gpt2m_cli.parser()
    args = parser.parse_args(argv)
    make_deterministic(args.threads)
    config = Gpt2mConfig.quick() if args.quick else Gpt2mConfig()
    if args.sources == "paper":
        config = replace(config, **PAPER_SOURCES)
        parser.check(lambda: check_sources(config), "--sources paper: ")
    config = parser.check(lambda: replace(config, device=args.device, dtype=args.dtype,
                                          **({"model": args.model} if args.model else {})))
    parser.check(lambda: gpt2m_cli.model(config.model), "--model: ")
    with parser.check(FolderLock(args.out).acquire):
        try:
            run(config, args.out, args.seeds, progress=not args.no_progress, log=timed_log())
        except FileNotFoundError as err:
            parser.error(f"{err} {gpt2m_cli.HOW_TO_PROVIDE}")
