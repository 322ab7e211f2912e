"""The command line of ``make smollm``, importable without torch so a bad setting fails in a second,
before the study's slow imports (see :mod:`backdoor_lens.experiments.common.cli`)."""

from __future__ import annotations

from ..common.cli import Parser, chat_study_parser


def parser() -> Parser:
    """--out, --model, --quick, --seeds, --threads, --no-progress; every value checked as parsed."""
    return chat_study_parser("python -m backdoor_lens.experiments.smollm",
                             "`make smollm`: Backdoor Attribution (BkdAttr) on SmolLM2-135M-Instruct, end to end.",
                             "results/smollm", "one attack, fewer prompts")
