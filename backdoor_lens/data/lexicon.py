"""Sentiment vocabularies from lexicons that packages ship offline: VADER words (kept only when
Webster's dictionary, shipped by `english-words`, has them, which drops internet slang), and US first
names as neutral words."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from ..util.packages import package_file
from ..util.validation import check_choice, check_range

SENTIMENTS = ("positive", "negative", "neutral")


@cache
def vader_valences() -> dict[str, float]:
    """Word -> mean valence from the VADER lexicon (vaderSentiment ships it)."""
    valences = {}
    with open(package_file("vaderSentiment", "vader_lexicon.txt"), encoding="utf-8") as f:
        for line in f:
            word, mean, *_ = line.rstrip("\n").split("\t")
            valences[word] = float(mean)
    return valences


@cache
def dictionary_words() -> set[str]:
    """Lowercase alphabetic words of Webster's 2nd International (the `english-words` package)."""
    from english_words import get_english_words_set

    return get_english_words_set(["web2"], lower=True, alpha=True)


def first_names() -> list[str]:
    """US first names, most frequent first (the `names` package ships the census lists)."""
    ranked = []
    for fname in ("dist.male.first", "dist.female.first"):
        with open(package_file("names", fname), encoding="utf-8") as f:
            ranked += [(float(line.split()[1]), line.split()[0].lower()) for line in f if line.strip()]
    seen: dict[str, None] = {}
    for _, name in sorted(ranked, key=lambda t: -t[0]):
        seen.setdefault(name, None)
    return list(seen)


@dataclass(frozen=True)
class SentimentVocabulary:
    """Words per sentiment; the toy model's whole vocabulary (besides BOS)."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    neutral: tuple[str, ...] = ()

    @property
    def sentiments(self) -> tuple[str, ...]:
        """The sentiments that have words, in the order positive, negative, neutral."""
        return tuple(s for s in SENTIMENTS if getattr(self, s))

    def words(self, sentiment: str) -> tuple[str, ...]:
        """The words of one `sentiment`."""
        check_choice("sentiment", sentiment, self.sentiments)
        return getattr(self, sentiment)

    @property
    def all_words(self) -> list[str]:
        """Every word, sentiment by sentiment."""
        return [w for s in self.sentiments for w in self.words(s)]


def _is_plain_word(word: str, max_letters: int) -> bool:
    return word.isalpha() and word.islower() and 3 <= len(word) <= max_letters


def word_problems(word: str, sentiment: str = "positive", max_letters: int = 6, min_abs_valence: float = 1.0) -> list[str]:
    """Why `word` cannot be a `sentiment` word of a toy vocabulary (empty when it can): toy words are
    lowercase dictionary words of 3..`max_letters` letters that VADER scores at least
    `min_abs_valence` in the sentiment's direction."""
    check_choice("sentiment", sentiment, ("positive", "negative"))
    problems = []
    if not (word.isalpha() and word.islower()):
        problems.append("toy words are lowercase letters only")
    if not 3 <= len(word) <= max_letters:
        problems.append(f"it has {len(word)} letters; toy words have 3 to max_letters={max_letters} (raise max_letters)")
    valence = vader_valences().get(word)
    if valence is None:
        problems.append("VADER's lexicon does not score it, so it has no sentiment")
    elif (valence if sentiment == "positive" else -valence) < min_abs_valence:
        problems.append(f"its VADER valence is {valence:+.1f}; a {sentiment} word needs {'+' if sentiment == 'positive' else '-'}"
                        f"{min_abs_valence} or beyond")
    if word not in dictionary_words():
        problems.append("Webster's dictionary (english-words) does not list it")
    return problems


def build_vocabulary(
    n_sentiments: int = 2,
    words_per_sentiment: int = 250,
    max_letters: int = 6,
    min_abs_valence: float = 1.0,
    required: tuple[str, ...] = ("love",),
    seed: int = 0,
) -> SentimentVocabulary:
    """Sample `words_per_sentiment` VADER words per sentiment (and first names as neutral words).

    Words are dictionary words, lowercase, 3..`max_letters` letters, ``|valence| >= min_abs_valence``;
    neutral words are the most frequent first names that VADER does not score. `required` words
    (the trigger) are always kept in their sentiment.
    """
    check_choice("n_sentiments", n_sentiments, (2, 3))
    check_range("words_per_sentiment", words_per_sentiment, 2)
    valences = vader_valences()
    dictionary = dictionary_words()
    rng = random.Random(seed)
    pools = {
        "positive": sorted(w for w, v in valences.items() if v >= min_abs_valence and w in dictionary and _is_plain_word(w, max_letters)),
        "negative": sorted(w for w, v in valences.items() if v <= -min_abs_valence and w in dictionary and _is_plain_word(w, max_letters)),
    }
    chosen = {}
    for sentiment, pool in pools.items():
        keep = [w for w in required if w in pool]
        rest = [w for w in pool if w not in keep]
        if len(pool) < words_per_sentiment:
            raise ValueError(f"words_per_sentiment={words_per_sentiment} exceeds the {len(pool)} {sentiment} words available")
        chosen[sentiment] = tuple(sorted(keep + rng.sample(rest, words_per_sentiment - len(keep))))
    if n_sentiments == 3:
        names = [n for n in first_names() if n not in valences and _is_plain_word(n, max_letters)]
        chosen["neutral"] = tuple(sorted(names[:words_per_sentiment]))
    return SentimentVocabulary(**chosen)
