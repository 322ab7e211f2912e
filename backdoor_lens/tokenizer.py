"""A word-level tokenizer for toy models: one token per word, so a word's sentiment is its token's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import read_json, write_json

BOS = "<bos>"


@dataclass
class WordTokenizer:
    """Maps whitespace-separated words to ids. Id 0 is the beginning-of-sequence token."""

    words: list[str]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(set(self.words)) != len(self.words):
            raise ValueError("words must be unique")
        self.words = [BOS] + [w for w in self.words if w != BOS]
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def bos_id(self) -> int:
        """The id of the beginning-of-sequence token (always 0)."""
        return 0

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def token_id(self, word: str, arg: str = "word") -> int:
        """The id of one word; the error names `arg` when the word is not in the vocabulary."""
        if word not in self.index:
            raise ValueError(f"{arg}={word!r} is not in the vocabulary ({len(self)} words, e.g. {self.words[1:6]})")
        return self.index[word]

    def encode(self, text: str | Sequence[str], bos: bool = True) -> list[int]:
        """Ids of the words of `text` (a string or a word list), BOS first when `bos`."""
        words = text.split() if isinstance(text, str) else list(text)
        return ([self.bos_id] if bos else []) + [self.token_id(w, "text") for w in words]

    def encode_batch(self, texts: Sequence[str | Sequence[str]], bos: bool = True) -> torch.Tensor:
        """Encode equal-length texts into a [batch, pos] tensor."""
        ids = [self.encode(t, bos) for t in texts]
        if len({len(i) for i in ids}) > 1:
            raise ValueError("texts must all have the same number of words")
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The words of `ids` joined by spaces, BOS dropped."""
        return " ".join(self.words[int(i)] for i in ids if int(i) != self.bos_id)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON."""
        write_json(path, {"type": "word", "words": self.words[1:]})

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        """A tokenizer saved by :meth:`save`."""
        return cls(read_json(path)["words"])
