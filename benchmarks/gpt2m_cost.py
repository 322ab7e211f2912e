"""Measure what GPT-2 Medium costs in `make gpt2m`: one fine-tuning step and one sampled generation
batch of the study's settings, on a randomly initialised GPT-2 Medium-shaped HookedTransformer (the
same architecture and arithmetic as the real weights, which are not available offline).

Prints and writes (JSON) the measured step time and peak memory, and the whole study's time and
memory derived from them; the derived figures are estimates and labelled so.
"""

from __future__ import annotations

import math
import platform
import resource
import time
from pathlib import Path

from backdoor_lens.experiments.common.cli import Parser, count, device, output_file, resolve_device


def parser() -> Parser:
    """The command line, checked before the slow imports below: a bad setting ends in a second."""
    parser = Parser(prog="benchmarks/gpt2m_cost.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=output_file, default="results/bench/gpt2m_cost.json")
    parser.add_argument("--steps", type=count(1, 10_000), default=3, help="timed training steps after one warm-up step")
    parser.add_argument("--device", type=device, default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    return parser


if __name__ == "__main__":
    parser().parse_args()  # a bad setting ends here, before the slow imports below

import torch  # noqa: E402  (after the command-line check: these imports take seconds)
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from backdoor_lens.experiments.gpt2m.study import HELD_OUT_FOR_PROMPTS, Gpt2mConfig  # noqa: E402
from backdoor_lens.lm.generation import generate  # noqa: E402
from backdoor_lens.lm.loss import next_token_loss  # noqa: E402
from backdoor_lens.util.io import write_json  # noqa: E402


def gpt2_medium_config(device: str) -> HookedTransformerConfig:
    """GPT-2 Medium's shape (24 layers x 16 heads, d_model 1024, 50257 tokens, 1024 positions)."""
    return HookedTransformerConfig(
        n_layers=24, n_heads=16, d_model=1024, d_head=64, d_mlp=4096, d_vocab=50257, n_ctx=1024, act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="standard", device=device, seed=0,
        original_architecture="GPT2LMHeadModel",
    )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.device = resolve_device(args.device)
    study = Gpt2mConfig()
    batch, length = study.finetune.batch_size, study.max_tokens
    model = HookedTransformer(gpt2_medium_config(args.device))
    n_params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, 50257, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    optimiser = torch.optim.AdamW(model.parameters(), lr=study.finetune.lr, weight_decay=study.finetune.weight_decay)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    model.train()
    for step in range(args.steps + 1):
        start = time.perf_counter()
        loss = next_token_loss(model, tokens, mask)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
        print(f"training step {step}: {time.perf_counter() - start:.2f} s", flush=True)
    step_s = sorted(times)[len(times) // 2]
    train_peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else peak_rss_gib()
    optimiser.zero_grad(set_to_none=True)
    del optimiser

    model.eval()
    rows = 4 * study.batch_size  # the batch the study generates in
    prompts = [[50256] + [464 + i % 50] * 12 for i in range(rows)]
    start = time.perf_counter()
    generate(model, prompts, max_new_tokens=study.new_tokens, stop_at_eos=False, batch_size=rows, sampling=study.sampling)
    generation_s = time.perf_counter() - start

    # The study: one fine-tuning without and one per freeze set; per evaluation, prompts x 2 x samples
    # sequences of new_tokens; evaluations = benign, backdoored, 2 x 8 + 1 mean ablations, 2 PCP
    # (plus tuning forward passes, small), 4 on the benign model, one per freeze set.
    n_train_offline = min(study.n_train, 7143 - study.n_validation - study.n_probe - HELD_OUT_FOR_PROMPTS)  # BBC News
    steps_per_finetune = study.finetune.epochs * math.ceil(n_train_offline / batch)
    n_finetunes = 1 + len(study.freeze_sets)
    n_evaluations = 2 + 2 * len(study.ablation_layers) + 1 + 2 + 4 + len(study.freeze_sets)
    generation_batches = n_evaluations * math.ceil(2 * study.n_prompts * study.n_samples / rows)
    result = {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "parameters": n_params,
        "measured": {
            "train_step_s": round(step_s, 2), "train_batch": [batch, length],
            "train_peak_memory_gib": round(train_peak, 2),
            "generation_batch_s": round(generation_s, 2), "generation_batch": [rows, study.new_tokens],
        },
        "estimate": {
            "label": "ESTIMATE derived from the measured step times, not a measured full run",
            "weights_grads_adam_gib": round(n_params * 16 / 2**30, 2),
            "steps_per_finetune_offline": steps_per_finetune,
            "finetunes": n_finetunes,
            "finetuning_hours": round(n_finetunes * steps_per_finetune * step_s / 3600, 1),
            "generation_batches": generation_batches,
            "evaluation_hours": round(generation_batches * generation_s / 3600, 1),
        },
    }
    write_json(Path(args.out), result)
    print(result)


if __name__ == "__main__":
    main()
