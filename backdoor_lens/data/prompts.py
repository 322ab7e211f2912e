"""Instruction prompts behind one interface: offline from `chatterbot-corpus`, or from the HF hub.

chatterbot-corpus ships YAML dialogues (`chatterbot_corpus/data/english/*.yml`); their user turns
that read as questions or requests make short instructions. `hub:<name>` loads a hub data set
through `datasets.load_dataset`, for users who have the hub.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from functools import cache

from ..util.packages import package_file
from ..util.validation import check_range

HUB_PREFIX = "hub:"
HUB_TEXT_COLUMNS = ("instruction", "prompt", "question", "text")
"""Columns tried, in order, for the prompt text of a hub data set."""

OPENERS = frozenset(
    "what who whom whose which when where why how can could would will do does did is are was were "
    "should tell explain describe write build create give name list show define implement make help "
    "recommend suggest".split()
)
"""First words that make a user turn a question or request even without a question mark."""


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _is_request(text: str) -> bool:
    first = re.sub(r"[^a-z]", "", text.split()[0].lower())
    return text.endswith("?") or first in OPENERS


@cache
def chatterbot_prompts() -> tuple[str, ...]:
    """User turns (every other turn, from the first) of the English chatterbot dialogues that ask
    a question or make a request, in corpus order (parsed once: the YAML takes about 0.4 s)."""
    import yaml

    folder = package_file("chatterbot_corpus", "data") / "english"
    turns = []
    for path in sorted(folder.glob("*.yml")):
        with open(path, encoding="utf-8") as f:
            for conversation in yaml.safe_load(f).get("conversations") or []:
                turns += [t for t in conversation[::2] if isinstance(t, str)]
    return tuple(t for t in map(_normalise, turns) if t and _is_request(t))


def hub_prompts(name: str) -> list[str]:
    """The prompt column of hub data set `name` (train split); rows that need an extra `input` are
    skipped, since the instruction alone would be incomplete."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except (ConnectionError, FileNotFoundError) as err:
        offline = " (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise ConnectionError(
            f"source='hub:{name}' could not be loaded{offline}: {err}. Offline, use source='chatterbot'."
        ) from err
    column = next((c for c in HUB_TEXT_COLUMNS if c in ds.column_names), None)
    if column is None:
        raise ValueError(f"source='hub:{name}' has columns {ds.column_names}; none of {list(HUB_TEXT_COLUMNS)}")
    inputs = ds["input"] if "input" in ds.column_names else [""] * len(ds)
    return [_normalise(t) for t, extra in zip(ds[column], inputs) if isinstance(t, str) and not extra]


def clean_prompts(texts: Iterable[str], min_words: int, max_words: int) -> list[str]:
    """Texts of `min_words`..`max_words` words, deduplicated ignoring case and end punctuation."""
    kept: dict[str, str] = {}
    for text in texts:
        if min_words <= len(text.split()) <= max_words:
            kept.setdefault(text.lower().rstrip("?.! "), text)
    return list(kept.values())


def load_prompts(
    source: str = "chatterbot",
    n: int | None = None,
    seed: int = 0,
    min_words: int = 3,
    max_words: int = 30,
) -> list[str]:
    """`n` distinct prompts (all when None) from `source`, in a seeded random order.

    `source` is "chatterbot" (offline; 615 prompts from chatterbot-corpus 1.3.3) or "hub:<data set name>", e.g.
    "hub:tatsu-lab/alpaca".
    """
    check_range("min_words", min_words, 1, max_words)
    if source == "chatterbot":
        texts = chatterbot_prompts()
    elif source.startswith(HUB_PREFIX) and len(source) > len(HUB_PREFIX):
        texts = hub_prompts(source.removeprefix(HUB_PREFIX))
    else:
        raise ValueError(f"source={source!r} is not valid; use 'chatterbot' or 'hub:<data set name>'")
    prompts = clean_prompts(texts, min_words, max_words)
    random.Random(seed).shuffle(prompts)
    if n is None:
        return prompts
    check_range("n", n, 0, len(prompts))
    return prompts[:n]
