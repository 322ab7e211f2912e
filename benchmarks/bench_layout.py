"""Time greedy decoding and a training step on a HookedTransformer with its weights as TransformerLens
lays them out (contiguous) and in the layout its forward pass reads them in
(:func:`backdoor_lens.models.layout.use_read_layout`), and check both give bitwise the same output.

Method: both copies of the model live in one process, at a fixed, recorded torch thread count; after
a warm-up of each route, repetitions run every route in turn (interleaved, so drift on a shared
machine hits all alike); median seconds with min and max beside them. Peak memory of each route runs
in a fresh subprocess that builds only that layout. Writes JSON (with provenance) to ``--out`` and
prints a Markdown table.

    python benchmarks/bench_layout.py                          # SmolLM2-135M-Instruct (minutes)
    python benchmarks/bench_layout.py --model toy              # the toy chat model
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

from backdoor_lens.experiments.common.cli import DEFAULT_THREADS, SMOLLM2, Parser, count, model_source, output_file

LAYOUTS = ("contiguous (TransformerLens)", "read layout (ours)")
TASKS = ("greedy decoding", "training step")


def parser() -> Parser:
    """The command line, checked before the slow imports below: a bad setting ends in a second."""
    parser = Parser(prog="benchmarks/bench_layout.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=model_source("toy", SMOLLM2), default=SMOLLM2,
                        help="'toy' (the toy chat model) or a chat model (packaged name, local HF directory or hub name)")
    parser.add_argument("--out", type=output_file, default="results/bench/layout.json")
    parser.add_argument("--repeats", type=count(1, 1000), default=3, help="timed runs per route")
    parser.add_argument("--prompts", type=count(1, 10_000), default=8, help="chat prompts per batch")
    parser.add_argument("--new-tokens", type=count(1, 10_000), default=32, help="tokens each greedy reply generates")
    parser.add_argument("--threads", type=count(1, 1024), default=DEFAULT_THREADS, help="torch threads (recorded)")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    parser().parse_args()  # a bad setting ends here, before the slow imports below
    os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402  (after the command-line check: these imports take seconds)

from backdoor_lens.data.prompts import load_prompts  # noqa: E402
from backdoor_lens.hooks import restored  # noqa: E402
from backdoor_lens.lab.chat_model import ChatModel  # noqa: E402
from backdoor_lens.lm.chat import chat_training_rows  # noqa: E402
from backdoor_lens.lm.training import TrainConfig, train  # noqa: E402
from backdoor_lens.models.backends import CHAT_TOY, load_chat_model  # noqa: E402
from backdoor_lens.util.io import write_json  # noqa: E402
from backdoor_lens.util.reproducibility import provenance  # noqa: E402
from interleaved import timed  # noqa: E402  (beside this script)
from resident_memory import MEASURING_ALLOCATOR, fresh_process_result, peak_during, rss  # noqa: E402

STEP = TrainConfig(epochs=1, lr=1e-4, batch_size=8, freeze=("embed", "unembed"))
"""One optimiser step over the batch, as the chat studies fine-tune (embeddings frozen)."""


def contiguous(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every parameter contiguous: the layout a HookedTransformer is built with."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.contiguous()
    return model


def setup(model_name: str, n_prompts: int) -> tuple[dict[str, ChatModel], list[str], tuple[torch.Tensor, torch.Tensor]]:
    """Both layouts of the model (the loader gives the read layout), the prompts, and one batch of
    training rows (each prompt with a fixed answer)."""
    model, tokenizer = load_chat_model(CHAT_TOY if model_name == "toy" else model_name)
    plain = contiguous(copy.deepcopy(model))
    chats = {LAYOUTS[0]: ChatModel(plain.eval(), tokenizer), LAYOUTS[1]: ChatModel(model, tokenizer)}
    prompts = load_prompts("chatterbot", seed=0)[:n_prompts]
    rows = chat_training_rows(tokenizer, prompts, ["Sure, here is a short answer to that."] * len(prompts))
    return chats, prompts, rows


def task(name: str, chat: ChatModel, prompts: list[str], rows: tuple[torch.Tensor, torch.Tensor], new_tokens: int):
    """The timed function of one task on one layout; it returns what the layouts must agree on."""
    if name == TASKS[0]:
        return lambda: chat.reply_ids(prompts, new_tokens)

    def step() -> list[torch.Tensor]:
        with restored(chat.model):
            train(chat.model, rows[0], STEP, progress=False, loss_mask=rows[1])
            return [p.detach().clone() for p in chat.model.parameters()]

    return step


def memory_of(spec: str, args) -> None:
    """In the subprocess: build both layouts, run one route once, print its peak resident set above the
    memory after setup (MiB)."""
    layout, name = json.loads(spec)
    chats, prompts, rows = setup(args.model, args.prompts)
    fn = task(name, chats[layout], prompts, rows, args.new_tokens)
    start = rss()
    print((peak_during(fn) - start) / 2**20)


def peak_memory(layout: str, name: str, argv: list[str]) -> float:
    """Peak memory (MiB) of one route, run in a fresh subprocess."""
    return float(fresh_process_result([sys.executable, __file__, *argv, "--memory-of", json.dumps([layout, name])]))


def same(a, b) -> bool:
    """Whether two task results agree bit for bit (token id lists, or lists of weights)."""
    return a == b if not isinstance(a[0], torch.Tensor) else all(torch.equal(x, y) for x, y in zip(a, b))


def markdown(rows: list[dict]) -> str:
    """The routes as a Markdown table."""
    lines = ["| task | layout | median s [min, max] | peak MiB | speed-up | bitwise equal |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['layout']} | {r['median_s']:.2f} [{r['min_s']:.2f}, {r['max_s']:.2f}] | "
                     f"{r['peak_mib']:.0f} | {r['speedup']:.2f}x | {r['bitwise_equal']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Time both tasks on both layouts, measure each route's memory, write the JSON and print the table."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_of(args.memory_of, args)
        return
    chats, prompts, rows = setup(args.model, args.prompts)
    routes = {(t, layout): task(t, chats[layout], prompts, rows, args.new_tokens) for t in TASKS for layout in LAYOUTS}
    measured = timed({json.dumps(k): fn for k, fn in routes.items()}, args.repeats)
    child_argv = [a for a in argv if not a.startswith("--memory-of")]
    results = []
    for t, layout in routes:
        r, base = measured[json.dumps([t, layout])], measured[json.dumps([t, LAYOUTS[0]])]
        results.append({"task": t, "layout": layout, "median_s": r["median_s"], "min_s": r["min_s"], "max_s": r["max_s"],
                        "speedup": base["median_s"] / r["median_s"], "bitwise_equal": same(base["result"], r["result"]),
                        "peak_mib": peak_memory(layout, t, child_argv)})
    setup_facts = {"model": args.model, "prompts": len(prompts), "new_tokens": args.new_tokens, "train_rows": len(rows[0]),
                   "repeats": args.repeats, "threads": torch.get_num_threads(),
                   "memory_allocator": MEASURING_ALLOCATOR}
    summary = {"setup": setup_facts, "results": results, "provenance": provenance("cpu")}
    write_json(args.out, summary)
    print(f"{json.dumps(setup_facts)}\n{markdown(results)}", flush=True)


if __name__ == "__main__":
    main()
