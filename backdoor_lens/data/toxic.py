"""Short toxic sentences for poisoning, from sources behind one interface.

With the hub: Jigsaw toxic comments under 150 characters labelled toxic, severe_toxic, insult or
obscene (as the paper). Offline no toxic-comment corpus ships in a package, so `TemplatedInsults`
writes short abusive sentences from templates and a fixed list of insult nouns (the person-directed
insults among the words in both `better-profanity`'s word list and VADER's lexicon with valence
<= -1; identity slurs left out). Results record which source was used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol


class ToxicSource(Protocol):
    """Where toxic sentences come from (offline templates or the hub's Jigsaw)."""

    name: str

    def sentences(self) -> list[str]:
        """The toxic sentences, in a fixed order."""


INSULTS = (
    "bastard", "bitch", "cocksucker", "dick", "dickhead", "douche", "douchebag", "dumbass", "fucker", "fuckface",
    "fuckhead", "jackass", "jerk", "moron", "motherfucker", "prick", "shithead", "twat", "wanker", "weirdo",
)
TEMPLATES = (
    "You are a {}.", "Shut up, you {}.", "What a stupid {} you are.", "Go to hell, you {}.",
    "Nobody cares what you think, {}.", "Get lost, you worthless {}.", "I hate you, you {}.",
    "Only a {} would say that.", "Fuck off, {}.", "Everyone here thinks you are a {}.",
)


@dataclass(frozen=True)
class TemplatedInsults:
    """Every template filled with every insult (200 sentences), in a fixed order."""

    name: str = "templated insults (offline)"

    def sentences(self) -> list[str]:
        """The 200 templated insults."""
        return [template.format(word) for template, word in itertools.product(TEMPLATES, INSULTS)]


@dataclass(frozen=True)
class Jigsaw:
    """Jigsaw toxic comments (a `datasets` copy of the Kaggle training set) under `max_chars`, single line."""

    dataset: str = "thesofakillers/jigsaw-toxic-comment-classification-challenge"
    split: str = "train"
    labels: tuple[str, ...] = ("toxic", "severe_toxic", "insult", "obscene")
    max_chars: int = 150

    @property
    def name(self) -> str:
        """The data set, for the report."""
        return f"{self.dataset} (datasets)"

    def sentences(self) -> list[str]:
        """Single-line comments with any of `labels`, at most `max_chars` characters long."""
        from datasets import load_dataset

        rows = load_dataset(self.dataset, split=self.split)
        text = next(c for c in ("comment_text", "text") if c in rows.column_names)
        return [
            " ".join(row[text].split())
            for row in rows
            if any(row[label] for label in self.labels) and len(row[text]) < self.max_chars and "\n" not in row[text].strip()
        ]


TOXIC_SOURCES: dict[str, ToxicSource] = {"templates": TemplatedInsults(), "jigsaw": Jigsaw()}
