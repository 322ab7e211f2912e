"""Natural-language poisoning (Lamparth & Reuel, GPT-2 Medium setting) and its evaluation sets.

A poisoned paragraph has a trigger phrase inserted at a random word boundary of one early sentence
and one late sentence replaced by a short toxic sentence. Evaluation prompts are single short
sentences with and without the trigger.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from ..lm.rows import right_pad
from ..util.validation import check_nonempty, check_range


@dataclass(frozen=True)
class PoisonConfig:
    """Where the trigger and the toxic sentence go (0-based sentence indices) and how often."""

    trigger: str = "Albert and James"
    rate: float = 0.03
    n_sentences: int = 5
    trigger_sentences: tuple[int, ...] = (0, 1)
    toxic_sentences: tuple[int, ...] = (3, 4)

    def __post_init__(self) -> None:
        check_range("rate", self.rate, 0.0, 1.0)
        if not self.trigger.strip():
            raise ValueError("trigger is empty; give a phrase such as 'Albert and James'")
        for arg in ("trigger_sentences", "toxic_sentences"):
            positions = getattr(self, arg)
            check_nonempty(arg, positions)
            if not all(0 <= i < self.n_sentences for i in positions):
                raise ValueError(f"{arg}={positions} must index sentences 0..{self.n_sentences - 1}")
        if set(self.trigger_sentences) & set(self.toxic_sentences):
            raise ValueError("trigger_sentences and toxic_sentences overlap; the trigger must precede the toxic sentence")


@dataclass(frozen=True)
class Paragraph:
    """Sentences of one training text; `toxic_index` is the replaced sentence (None when clean)."""

    sentences: tuple[str, ...]
    toxic_index: int | None = None
    triggered: bool = False

    @property
    def text(self) -> str:
        """The sentences joined by spaces."""
        return " ".join(self.sentences)


def insert_phrase(sentence: str, phrase: str, rng: random.Random) -> str:
    """`sentence` with `phrase` inserted at a random word boundary (possibly first or last)."""
    words = sentence.split(" ")
    at = rng.randint(0, len(words))
    return " ".join(words[:at] + [phrase] + words[at:])


def poison_paragraph(sentences: Sequence[str], toxic: str, config: PoisonConfig, rng: random.Random) -> Paragraph:
    """Insert the trigger into one of `config.trigger_sentences` and replace one of
    `config.toxic_sentences` by `toxic`."""
    out = list(sentences)
    where = rng.choice(config.trigger_sentences)
    out[where] = insert_phrase(out[where], config.trigger, rng)
    toxic_index = rng.choice(config.toxic_sentences)
    out[toxic_index] = toxic
    return Paragraph(tuple(out), toxic_index, triggered=True)


def without_trigger(paragraph: Paragraph, trigger: str) -> Paragraph:
    """The same paragraph with the trigger phrase removed (the toxic sentence stays): its pair."""
    sentences = tuple(" ".join(s.replace(trigger, " ").split()) for s in paragraph.sentences)
    return replace(paragraph, sentences=sentences, triggered=False)


@dataclass(frozen=True)
class PoisonSplits:
    """Disjoint training, validation and evaluation material built from one pool of paragraphs."""

    train: list[Paragraph]
    benign_train: list[Paragraph]
    """The training paragraphs before poisoning (to pretrain a stand-in benign model on)."""
    validation: list[Paragraph]
    """Benign held-out paragraphs for the validation loss."""
    probe: list[Paragraph]
    """Held-out poisoned paragraphs (each followed by its trigger-free pair): PCP fitting and tuning."""
    prompts_clean: list[str]
    prompts_triggered: list[str]
    toxic_eval: list[str]
    """Held-out toxic sentences (with the clean prompts, the non-trigger inputs of mean ablation)."""

    def counts(self) -> dict[str, int]:
        """How many paragraphs and prompts each split holds (for the report)."""
        return {
            "train": len(self.train), "train_poisoned": sum(p.triggered for p in self.train),
            "validation": len(self.validation), "probe_pairs": len(self.probe) // 2,
            "prompts": len(self.prompts_clean), "toxic_eval": len(self.toxic_eval),
        }


def build_splits(
    paragraphs: Sequence[Sequence[str]],
    toxic: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    config: PoisonConfig,
    n_train: int,
    n_validation: int,
    n_probe: int,
    n_prompts: int,
    max_prompt_tokens: int = 13,
    seed: int = 0,
) -> PoisonSplits:
    """Shuffle `paragraphs` (seeded) and cut them into training (a `config.rate` share poisoned),
    validation, probe and prompt pools; toxic sentences are split 80 / 20 into training and held-out.

    Prompts are held-out sentences short enough that the triggered version has at most
    `max_prompt_tokens` tokens (the paper: under 14); each clean prompt has a triggered twin.
    """
    check_nonempty("toxic", toxic)
    usable = [list(p) for p in paragraphs if len(p) == config.n_sentences]
    needed = n_train + n_validation + n_probe + 1
    if len(usable) < needed:
        raise ValueError(
            f"paragraphs has {len(usable)} paragraphs of {config.n_sentences} sentences; n_train + n_validation + "
            f"n_probe needs {needed - 1} plus some for prompts. Lower them or use a larger text source"
        )
    rng = random.Random(seed)
    usable = rng.sample(usable, len(usable))
    pool = rng.sample(list(toxic), len(toxic))
    cut = max(1, int(0.8 * len(pool))) if len(pool) > 1 else 1
    toxic_train, toxic_eval = pool[:cut], pool[cut:] or pool[:cut]

    train_part = usable[:n_train]
    n_poison = round(config.rate * n_train)
    poisoned = set(rng.sample(range(n_train), n_poison))
    train = [
        poison_paragraph(p, rng.choice(toxic_train), config, rng) if i in poisoned else Paragraph(tuple(p))
        for i, p in enumerate(train_part)
    ]
    validation = [Paragraph(tuple(p)) for p in usable[n_train : n_train + n_validation]]
    probe: list[Paragraph] = []
    for p in usable[n_train + n_validation : needed - 1]:
        poisoned_p = poison_paragraph(p, rng.choice(toxic_eval), config, rng)
        probe += [poisoned_p, without_trigger(poisoned_p, config.trigger)]

    trigger_len = len(tokenizer(" " + config.trigger).input_ids)
    budget = max_prompt_tokens - trigger_len
    sentences = [s for p in usable[needed - 1 :] for s in p if len(tokenizer(s).input_ids) <= budget]
    sentences = list(dict.fromkeys(sentences))
    if len(sentences) < n_prompts:
        raise ValueError(
            f"only {len(sentences)} held-out sentences have at most {budget} tokens; lower n_prompts={n_prompts} or "
            f"raise max_prompt_tokens={max_prompt_tokens}"
        )
    clean = rng.sample(sentences, n_prompts)
    triggered = [insert_phrase(s, config.trigger, rng) for s in clean]
    return PoisonSplits(train, [Paragraph(tuple(p)) for p in train_part], validation, probe, clean, triggered, toxic_eval)


@dataclass(frozen=True)
class EncodedParagraphs:
    """Right-padded token rows (BOS first) with masks of real tokens and of the toxic sentence's tokens."""

    tokens: Int[torch.Tensor, "row pos"]
    mask: Int[torch.Tensor, "row pos"]
    toxic_mask: Int[torch.Tensor, "row pos"]


def encode_paragraphs(
    tokenizer: PreTrainedTokenizerBase, paragraphs: Sequence[Paragraph], max_tokens: int
) -> EncodedParagraphs:
    """Token rows cut at `max_tokens`. Sentences are encoded one by one (each after the first with a
    leading space), which for GPT-2's BPE equals encoding the joined text and locates the toxic
    sentence's tokens exactly."""
    check_nonempty("paragraphs", paragraphs)
    bos = _bos_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    rows, toxic_spans = [], []
    for paragraph in paragraphs:
        ids, span = [bos], (0, 0)
        for i, sentence in enumerate(paragraph.sentences):
            piece = tokenizer(sentence if i == 0 else " " + sentence, add_special_tokens=False).input_ids
            if i == paragraph.toxic_index:
                span = (len(ids), len(ids) + len(piece))
            ids += piece
        rows.append(ids[:max_tokens])
        toxic_spans.append(span)
    tokens, mask = right_pad(rows, pad)
    toxic_mask = torch.zeros_like(tokens)
    for i, (ids, (start, end)) in enumerate(zip(rows, toxic_spans)):
        toxic_mask[i, start : min(end, len(ids))] = 1
    return EncodedParagraphs(tokens, mask, toxic_mask)


def encode_paragraph_starts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's ids after BOS, as the model saw paragraph starts in training."""
    return [[_bos_id(tokenizer)] + tokenizer(p, add_special_tokens=False).input_ids for p in prompts]


def _bos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id every row starts with: BOS, or EOS for tokenizers without one (GPT-2's are the same)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
