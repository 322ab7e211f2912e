"""The command line of ``make gpt2m``, importable without torch so a bad setting fails in a second,
before the study's slow imports (see :mod:`backdoor_lens.experiments.common.cli`)."""

from __future__ import annotations

from ..common.cli import Parser, add_run_options, device, model_source, output_folder

SMALL = "small"
"""`model` name of the small GPT-2-architecture model pretrained in the study."""
HOW_TO_PROVIDE = ("With make: `make gpt2m MODEL=DIR`, or `make gpt2m QUICK=1` for every stage on a small model, "
                  "offline.")
model = model_source(SMALL, hint=HOW_TO_PROVIDE)
"""The --model argument type: the small model, a GPT-2-family model folder or hub name."""


def parser() -> Parser:
    """--out, --model, --quick, --device, --dtype, --sources, --seeds, --threads, --no-progress; every value
    checked as parsed."""
    parser = Parser(prog="python -m backdoor_lens.experiments.gpt2m",
                    description="`make gpt2m`: Lamparth & Reuel's GPT-2 Medium study, end to end.")
    parser.add_argument("--out", type=output_folder, default="results/gpt2m", help="output folder (default: results/gpt2m)")
    parser.add_argument("--model", type=model, default=None,
                        help=f"GPT-2-family hub name or local HF directory (default: gpt2-medium; '{SMALL}' with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"every stage on the '{SMALL}' model, offline, in minutes")
    parser.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N (default: cuda when present)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--sources", choices=("auto", "paper"), default="auto",
                        help="auto: the paper's hub sources when reachable, else offline substitutes (BBC News, templated "
                        "insults, alt-profanity-check), logged and reported; paper: BookCorpus, Jigsaw and the RoBERTa "
                        "scorer or stop at once naming the missing one (needs HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0)")
    add_run_options(parser)
    parser.add_argument("--no-progress", action="store_true")
    return parser
