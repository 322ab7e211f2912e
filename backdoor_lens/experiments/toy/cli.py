"""The command line of ``make toy``, importable without torch so a bad setting fails in a second,
before the study's slow imports (see :mod:`backdoor_lens.experiments.common.cli`)."""

from __future__ import annotations

from ..common.cli import Parser, add_run_options, count, output_folder, storage

MAX_TRIALS = 100_000


def parser() -> Parser:
    """--out, --quick, --strength, --seeds, --threads, --storage, --trials, --no-progress; every value checked as parsed."""
    parser = Parser(prog="python -m backdoor_lens.experiments.toy",
                    description="`make toy`: the toy-model study of Lamparth & Reuel, end to end.")
    parser.add_argument("--out", type=output_folder, default="results/toy", help="results folder (default: results/toy)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and trials: minutes, still a real backdoor")
    parser.add_argument("--strength", choices=("saturated", "paper"), default="saturated",
                        help="saturated: the backdoor at full strength (p+t near 1); paper: calibrated to the paper's "
                        "unedited p+t (0.35 / 0.23), where single-module edits may act differently (default: saturated)")
    add_run_options(parser)
    parser.add_argument("--storage", type=storage, default=None,
                        help="Optuna storage: a journal file path (default: OUT/optuna.journal), sqlite:///FILE, or "
                        "postgresql://USER:PASSWORD@HOST/DB to spread the tuning over workers on several machines (each "
                        "with its own --out; needs pip install 'backdoor_lens[postgres]'); checked by connecting")
    parser.add_argument("--trials", type=count(1, MAX_TRIALS), default=None,
                        help=f"Optuna trials per PCP tuning (1..{MAX_TRIALS})")
    parser.add_argument("--no-progress", action="store_true")
    return parser
