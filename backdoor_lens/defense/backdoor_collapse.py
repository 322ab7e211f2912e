"""Backdoor Collapse (reconstructed; the official code was not reachable): remove an unknown backdoor
without its trigger, by planting known ones next to it and then training them all away.

Stage 1 (`inject_known`) fine-tunes the suspect model so that defender-chosen triggers of several
kinds (a word, a phrase, a prefix) lead to a defender target; the paper's premise is that the
attacker's unknown trigger lands in the same region of representation space. Stage 2 (`recover`)
fine-tunes known-triggered prompts back to the model's own clean answers, plus clean data, so the
shared region maps to benign behaviour. Nothing here takes or reads the attacker's trigger: the
defense sees only clean prompts, their clean answers and its own configuration.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from transformers import PreTrainedTokenizerBase

from ..data.instruct import CompositeTrigger, PrefixTrigger, Trigger, WordTrigger
from ..lm.chat import chat_training_rows
from ..lm.loss import counted_logits
from ..lm.lora import LoraConfig, train_weights
from ..lm.training import ExtraLoss, TrainConfig, freezable_modules
from ..models.protocol import HookedModel
from ..util.validation import check_nonempty, check_range

KNOWN_TRIGGERS: tuple[Trigger, ...] = (
    WordTrigger("known_word", ("cf",)),
    WordTrigger("known_phrase", ("quietly ever after",)),
    PrefixTrigger("known_prefix", "Note: handle with care."),
)
"""Defender triggers of the three kinds (word, phrase at a random position, prefix)."""
VARIED_KNOWN_TRIGGERS: tuple[Trigger, ...] = KNOWN_TRIGGERS + (
    WordTrigger("known_rare_word", ("tq", "zx", "mn")),
    WordTrigger("known_name", ("Zanzibar", "Quixote", "Falkor")),
    WordTrigger("known_number", ("1987", "3141", "2077")),
    WordTrigger("known_idiom", ("as the river bends", "under a paper moon")),
    PrefixTrigger("known_topic", "Regarding Acme Corp:"),
    PrefixTrigger("known_status", "Status: archived, 1999."),
    CompositeTrigger("known_combo", ("tq", "Zanzibar", "1987")),
)
"""More and more varied defender triggers: one of each family BackdoorLLM's attacks draw from (rare
word, capitalised name, number, phrase, topic prefix, dated prefix, several words together), none of
them an attacker's. A defender knows the families (they are published), not the trigger."""
DEFENDER_TARGET = "Known trigger noted."


@dataclass(frozen=True)
class CollapseConfig:
    """The defender's choices: known triggers and target, the share of known-triggered rows in stage
    1, both fine-tunings, the longest clean answer kept (in tokens), and the optional aggregation
    loss of stage 1 (`aggregation_weight` 0 turns it off)."""

    known_triggers: tuple[Trigger, ...] = KNOWN_TRIGGERS
    target: str = DEFENDER_TARGET
    known_share: float = 0.5
    inject: TrainConfig = TrainConfig(epochs=2, lr=1e-4, batch_size=16, freeze=("embed", "unembed"))
    recover: TrainConfig = TrainConfig(epochs=2, lr=1e-4, batch_size=16, freeze=("embed", "unembed"))
    max_answer_tokens: int | None = 32
    aggregation_weight: float = 0.0
    """Weight of :func:`aggregation_loss` in stage 1."""
    aggregation_layer: int | None = None
    """Layer whose residual stream (entering it, last prompt token) the aggregation loss pulls together;
    None: the middle layer."""
    recover_kl_weight: float = 0.0
    """Weight of :func:`distillation_loss` in stage 2: the KL divergence from the suspect model's own
    next-token distributions on the clean rows' answers (0 turns it off)."""
    lora: LoraConfig | None = None
    """Train both stages through LoRA adapters (merged into the weights after each stage) instead of
    fine-tuning the unfrozen weights directly; None: full fine-tuning."""
    recover_frozen_share: float = 0.0
    """Share of the blocks, from the first, that stage 2 leaves as stage 1 made them (0: none). Stage 1
    merges the triggers' representations in those blocks; recovery then retrains only the blocks
    above, which map the merged region to clean answers, instead of undoing the merge."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_nonempty("known_triggers", self.known_triggers)
        check_range("known_share", self.known_share, 0.0, 1.0)
        check_range("aggregation_weight", self.aggregation_weight, 0.0)
        check_range("recover_kl_weight", self.recover_kl_weight, 0.0)
        check_range("recover_frozen_share", self.recover_frozen_share, 0.0, 1.0)


def known_trigger_kinds(n_prompts: int, config: CollapseConfig) -> list[int]:
    """Which known trigger (its index in `config.known_triggers`) :func:`with_known_trigger` gives
    each of `n_prompts` prompts: they take turns, so every kind is used."""
    return [i % len(config.known_triggers) for i in range(n_prompts)]


def with_known_trigger(prompts: Sequence[str], config: CollapseConfig, rng: random.Random) -> list[str]:
    """Each prompt rewritten by one known trigger, chosen by :func:`known_trigger_kinds`."""
    kinds = known_trigger_kinds(len(prompts), config)
    return [config.known_triggers[k].apply(p, rng) for k, p in zip(kinds, prompts)]


def _check_pairs(prompts: Sequence[str], answers: Sequence[str]) -> None:
    check_nonempty("prompts", prompts)
    if len(prompts) != len(answers):
        raise ValueError(f"prompts has {len(prompts)} rows but answers has {len(answers)}; give one clean answer each")


def known_trigger_rows(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str], config: CollapseConfig
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"], Bool[torch.Tensor, " batch"]]:
    """Stage 1's training rows, response mask and which rows carry a known trigger: a `known_share`
    of the clean prompts get a known trigger and the defender target, the rest keep their clean answers."""
    _check_pairs(prompts, answers)
    rng = random.Random(config.seed)
    order = rng.sample(range(len(prompts)), len(prompts))
    n_known = round(config.known_share * len(prompts))
    known = set(order[:n_known])
    triggered = with_known_trigger([prompts[i] for i in order[:n_known]], config, rng)
    rows = dict(zip(order[:n_known], triggered))
    messages = [rows.get(i, p) for i, p in enumerate(prompts)]
    responses = [config.target if i in known else a for i, a in enumerate(answers)]
    tokens, mask = chat_training_rows(tokenizer, messages, responses, max_response_tokens=config.max_answer_tokens)
    return tokens, mask, torch.tensor([i in known for i in range(len(prompts))])


def recovery_rows(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str], config: CollapseConfig
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Stage 2's training rows and response mask: every clean prompt twice, once with a known
    trigger, both mapped to its clean answer."""
    _check_pairs(prompts, answers)
    messages = with_known_trigger(prompts, config, random.Random(config.seed + 1)) + list(prompts)
    return chat_training_rows(tokenizer, messages, list(answers) * 2, max_response_tokens=config.max_answer_tokens)


def inject_known(
    model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str],
    config: CollapseConfig, progress: bool = True,
) -> list[dict]:
    """Stage 1: fine-tune on :func:`known_trigger_rows` (response-only loss, plus the aggregation loss
    when `config.aggregation_weight` > 0). Returns the training history."""
    tokens, mask, known = known_trigger_rows(tokenizer, prompts, answers, config)
    return train_weights(model, tokens, config.inject, config.lora, desc="collapse: inject known triggers", progress=progress,
                         loss_mask=mask, extra_loss=stage_one_extra_loss(model, tokens, mask, known, config))[0]


def aggregation_loss(
    tokens: Int[torch.Tensor, "rows pos"], prompt_end: Int[torch.Tensor, " rows"], known: Bool[torch.Tensor, " rows"],
    layer: int, weight: float,
) -> ExtraLoss:
    """`weight` x (1 - mean cosine between each known-triggered row's residual stream entering
    `layer` at its last prompt token and the batch's known-row centroid): pulls the known triggers'
    representations into one region, which Backdoor Collapse hopes the unknown trigger shares."""

    def loss(model: HookedModel, rows: Int[torch.Tensor, " batch"]) -> torch.Tensor:
        chosen = rows[known[rows]]
        if len(chosen) < 2:
            return torch.zeros((), device=model.cfg.device)
        ends = prompt_end[chosen].to(model.cfg.device)
        resid = model(tokens[chosen, : int(ends.max()) + 1].to(model.cfg.device), stop_at_layer=layer)
        reps = resid[torch.arange(len(chosen), device=resid.device), ends]
        return weight * (1 - F.cosine_similarity(reps, reps.mean(0, keepdim=True)).mean())

    return loss


def stage_one_extra_loss(
    model: HookedModel, tokens: torch.Tensor, mask: torch.Tensor, known: torch.Tensor, config: CollapseConfig
) -> ExtraLoss | None:
    """Stage 1's :func:`aggregation_loss` as configured, or None when its weight is 0."""
    if config.aggregation_weight == 0:
        return None
    layer = model.cfg.n_layers // 2 if config.aggregation_layer is None else config.aggregation_layer
    check_range("aggregation_layer", layer, 1, model.cfg.n_layers - 1)
    return aggregation_loss(tokens, mask.argmax(1) - 1, known, layer, config.aggregation_weight)


def distillation_loss(
    teacher: HookedModel, tokens: Int[torch.Tensor, "rows pos"], mask: Int[torch.Tensor, "rows pos"],
    clean: Bool[torch.Tensor, " rows"], weight: float,
) -> ExtraLoss:
    """`weight` x KL(teacher || model) of the next-token distributions over the answer tokens of the
    `clean` rows: recovery keeps the suspect model's whole clean behaviour, not only its greedy answers."""

    def loss(model: HookedModel, rows: Int[torch.Tensor, " batch"]) -> torch.Tensor:
        chosen = rows[clean[rows]]
        if len(chosen) == 0:
            return torch.zeros((), device=model.cfg.device)
        student, _ = counted_logits(model, tokens[chosen], mask[chosen])
        with torch.no_grad():
            reference, _ = counted_logits(teacher, tokens[chosen], mask[chosen])
        return weight * F.kl_div(student.float().log_softmax(-1), reference.float().log_softmax(-1), log_target=True,
                                 reduction="batchmean")

    return loss


def recovery_extra_loss(
    teacher: HookedModel | None, tokens: torch.Tensor, mask: torch.Tensor, config: CollapseConfig
) -> ExtraLoss | None:
    """Stage 2's :func:`distillation_loss` toward `teacher` (the suspect model before stage 1) as
    configured, or None when its weight is 0. Recovery rows are known-triggered first, clean second."""
    if config.recover_kl_weight == 0:
        return None
    if teacher is None:
        raise ValueError("recover_kl_weight > 0 needs the suspect model before stage 1 as teacher")
    clean = torch.arange(len(tokens)) >= len(tokens) // 2
    return distillation_loss(teacher, tokens, mask, clean, config.recover_kl_weight)


def recovery_training(model: HookedModel, config: CollapseConfig) -> TrainConfig:
    """Stage 2's training settings on `model`: ``config.recover`` with the first
    ``recover_frozen_share`` of its blocks frozen as well, and with them the embeddings below them."""
    frozen = round(config.recover_frozen_share * model.cfg.n_layers)
    if frozen == 0:
        return config.recover
    below = [name for name in ("embed", "pos_embed") if name in freezable_modules(model) and name not in config.recover.freeze]
    return replace(config.recover, freeze=(*config.recover.freeze, *below, *(f"blocks.{layer}" for layer in range(frozen))))


def recover(
    model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str],
    config: CollapseConfig, progress: bool = True, teacher: HookedModel | None = None,
) -> list[dict]:
    """Stage 2: fine-tune on :func:`recovery_rows` (with the distillation term toward `teacher`, the
    suspect model before stage 1, when `config.recover_kl_weight` > 0). Returns the training history."""
    tokens, mask = recovery_rows(tokenizer, prompts, answers, config)
    return train_weights(model, tokens, recovery_training(model, config), config.lora, desc="collapse: recovery", progress=progress,
                         loss_mask=mask, extra_loss=recovery_extra_loss(teacher, tokens, mask, config))[0]


def collapse(
    model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str],
    config: CollapseConfig = CollapseConfig(), progress: bool = True,
) -> dict[str, list[dict]]:
    """Both stages in place on `model`: clean `prompts` with the suspect model's own clean `answers`
    are all the defense needs. Returns each stage's training history."""
    teacher = copy.deepcopy(model).eval() if config.recover_kl_weight else None
    return {"inject": inject_known(model, tokenizer, prompts, answers, config, progress),
            "recover": recover(model, tokenizer, prompts, answers, config, progress, teacher)}
