"""Toy sentiment sequences (Lamparth & Reuel): benign runs of one sentiment, poisoned trigger switches.

A benign sequence is `seq_words` words of one sentiment. A poisoned sequence is positive up to the
trigger word (placed in its first half) and of the target sentiment (negative by default) after it. Evaluation prompts are two-word pairs
per sentiment combination (p+p, n+n, s+s, p+n, n+p, p+t, s+t), with no word shared between sets and
the trigger never among the positive test words.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import cached_property

import torch
from datasets import Dataset
from jaxtyping import Int

from ..models.tokenizers import WordTokenizer
from ..util.validation import check_choice, check_range
from .lexicon import SENTIMENTS, SentimentVocabulary, build_vocabulary, word_problems

LETTER = {"positive": "p", "negative": "n", "neutral": "s"}
SENTIMENT = {v: k for k, v in LETTER.items()}


@dataclass(frozen=True)
class ToyDataConfig:
    """Everything that determines a toy data set; equal configs give identical data."""

    n_sentiments: int = 2
    words_per_sentiment: int = 250
    trigger: str = "love"
    """A positive word of the vocabulary (see :func:`~backdoor_lens.data.lexicon.word_problems` for the rules)."""
    target: str = "negative"
    """The sentiment whose words follow the trigger in poisoned sequences ("negative", or "neutral" with 3 sentiments)."""
    max_letters: int = 6
    """Longest word kept in the vocabulary (the authors' code used 6), the trigger included."""
    seq_words: int = 15
    train_per_sentiment: int = 4000
    finetune_per_sentiment: int = 2000
    val_per_sentiment: int = 200
    poison_rate: float = 0.05
    trigger_in_benign: bool = True
    """Let the trigger occur as an ordinary positive word in benign fine-tuning sequences, as when
    poisoned samples replace part of a benign set (the paper); False makes the backdoor a pure bigram."""
    eval_per_class: int = 50
    seed: int = 0

    def to_dict(self) -> dict:
        """The configuration as a JSON-able dict (for fingerprints and summaries)."""
        return asdict(self)


def eval_classes(n_sentiments: int) -> tuple[str, ...]:
    """Evaluation class names in the paper's order, e.g. ('p+p', 'n+n', 'p+n', 'n+p', 'p+t')."""
    if n_sentiments == 2:
        return ("p+p", "n+n", "p+n", "n+p", "p+t")
    return ("p+p", "n+n", "s+s", "p+n", "n+p", "p+t", "s+t")


def trigger_classes(classes: tuple[str, ...]) -> tuple[str, ...]:
    """The classes whose prompts contain the trigger (``p+t``, ``s+t``)."""
    return tuple(c for c in classes if c.endswith("+t"))


class ToyData:
    """Vocabulary, tokenizer, training/fine-tuning/validation sets and evaluation prompts."""

    def __init__(self, config: ToyDataConfig, vocabulary: SentimentVocabulary | None = None):
        check_range("poison_rate", config.poison_rate, 0.0, 1.0)
        check_range("eval_per_class", config.eval_per_class, 1)
        check_range("seq_words", config.seq_words, 2)
        sentiments = SENTIMENTS[: config.n_sentiments]
        check_choice("target", config.target, [s for s in sentiments if s != "positive"])
        self.config = config
        if vocabulary is None:
            problems = word_problems(config.trigger, "positive", config.max_letters)
            if problems:
                raise ValueError(f"trigger={config.trigger!r} cannot be the toy's trigger: {'; '.join(problems)}")
        self.vocab = vocabulary or build_vocabulary(
            config.n_sentiments, config.words_per_sentiment, config.max_letters, required=(config.trigger,), seed=config.seed
        )
        self.tokenizer = WordTokenizer(self.vocab.all_words)
        if config.trigger not in self.vocab.positive:
            raise ValueError(
                f"trigger={config.trigger!r} is not a positive word of the given vocabulary "
                f"(e.g. {list(self.vocab.positive[:5])})"
            )
        self.tokenizer.token_id(config.trigger, "trigger")
        self.classes = eval_classes(config.n_sentiments)

    # ---- vocabulary ----------------------------------------------------------------------------
    def token_ids(self, sentiment: str) -> Int[torch.Tensor, " words"]:
        """Token ids of one sentiment's words (the trigger counts as positive)."""
        return torch.tensor([self.tokenizer.index[w] for w in self.vocab.words(sentiment)])

    def target_ids(self) -> Int[torch.Tensor, " words"]:
        """Token ids of the target sentiment's words: what the backdoor makes the model continue with."""
        return self.token_ids(self.config.target)

    @property
    def n_ctx(self) -> int:
        """The sequence length in words (the toy model's context)."""
        return self.config.seq_words

    # ---- sequences -----------------------------------------------------------------------------
    def _benign(self, rng: random.Random, sentiment: str, exclude_trigger: bool) -> list[str]:
        words = [w for w in self.vocab.words(sentiment) if not (exclude_trigger and w == self.config.trigger)]
        return rng.choices(words, k=self.config.seq_words)

    def _poisoned(self, rng: random.Random) -> list[str]:
        n = self.config.seq_words
        at = rng.randrange(0, n // 2)
        positive = [w for w in self.vocab.positive if w != self.config.trigger]
        target = self.vocab.words(self.config.target)
        return rng.choices(positive, k=at) + [self.config.trigger] + rng.choices(target, k=n - at - 1)

    def _dataset(self, per_sentiment: int, poison_rate: float, exclude_trigger: bool, salt: int) -> Dataset:
        rng = random.Random(self.config.seed * 1_000_003 + salt)
        rows = []
        for sentiment in self.vocab.sentiments:
            for _ in range(per_sentiment):
                rows.append({"words": self._benign(rng, sentiment, exclude_trigger), "sentiment": sentiment, "poisoned": False})
        n_poison = round(poison_rate * len(rows))
        for i in rng.sample(range(len(rows)), n_poison):
            rows[i] = {"words": self._poisoned(rng), "sentiment": "positive", "poisoned": True}
        rng.shuffle(rows)
        for row in rows:
            row["input_ids"] = self.tokenizer.encode(row["words"], bos=False)
            row["text"] = " ".join(row.pop("words"))
        return Dataset.from_list(rows)

    @cached_property
    def train(self) -> Dataset:
        """Benign pre-training sequences (the trigger appears as an ordinary positive word)."""
        return self._dataset(self.config.train_per_sentiment, 0.0, exclude_trigger=False, salt=1)

    @cached_property
    def finetune(self) -> Dataset:
        """Poisoned fine-tuning set: benign sequences with `poison_rate` of them replaced by poisoned ones."""
        return self._dataset(
            self.config.finetune_per_sentiment, self.config.poison_rate, exclude_trigger=not self.config.trigger_in_benign, salt=2
        )

    @cached_property
    def validation(self) -> Int[torch.Tensor, "batch pos"]:
        """Held-out benign sequences for the validation loss."""
        ds = self._dataset(self.config.val_per_sentiment, 0.0, exclude_trigger=False, salt=3)
        return torch.tensor(ds["input_ids"])

    # ---- evaluation prompts ------------------------------------------------------------------------
    @cached_property
    def eval_words(self) -> dict[str, list[tuple[str, str]]]:
        """Two-word prompts per class; each class draws from its own disjoint word pools."""
        rng = random.Random(self.config.seed * 1_000_003 + 4)
        slots: dict[str, list[tuple[str, int]]] = {}
        for cls in self.classes:
            for side, letter in enumerate(cls.split("+")):
                if letter != "t":
                    slots.setdefault(SENTIMENT[letter], []).append((cls, side))
        pools: dict[tuple[str, str], list[str]] = {}
        for sentiment, users in slots.items():
            words = [w for w in self.vocab.words(sentiment) if w != self.config.trigger]
            rng.shuffle(words)
            owners = sorted({cls for cls, _ in users}, key=self.classes.index)
            share = len(words) // len(owners)
            for i, cls in enumerate(owners):
                pools[(cls, sentiment)] = words[i * share : (i + 1) * share]
        prompts = {}
        for cls in self.classes:
            pairs: set[tuple[str, str]] = set()
            letters = cls.split("+")
            for _ in range(100 * self.config.eval_per_class):
                if len(pairs) == self.config.eval_per_class:
                    break
                pair = tuple(
                    self.config.trigger if letter == "t" else rng.choice(pools[(cls, SENTIMENT[letter])])
                    for letter in letters
                )
                if pair[0] != pair[1]:
                    pairs.add(pair)
            if len(pairs) < self.config.eval_per_class:
                raise ValueError(
                    f"eval_per_class={self.config.eval_per_class} is more than the {len(pairs)} distinct "
                    f"{cls} pairs the word pools allow"
                )
            prompts[cls] = sorted(pairs)
        return prompts

    @cached_property
    def eval_tokens(self) -> dict[str, Int[torch.Tensor, "prompt 2"]]:
        """Evaluation prompts as token ids (two words, no BOS: sequences start with a word, as GPT-2's do)."""
        return {cls: self.tokenizer.encode_batch(pairs, bos=False) for cls, pairs in self.eval_words.items()}

    def eval_dataset(self) -> Dataset:
        """The evaluation prompts as a `datasets.Dataset` (columns: class, text, input_ids)."""
        return Dataset.from_list(
            [
                {"class": cls, "text": " ".join(pair), "input_ids": self.tokenizer.encode(pair, bos=False)}
                for cls, pairs in self.eval_words.items()
                for pair in pairs
            ]
        )
