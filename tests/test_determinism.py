"""Seeded training is bitwise reproducible at a fixed thread count once deterministic algorithms are
on: the same seed trained twice with 2 threads, in two fresh processes, gives identical weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from backdoor_lens.util.reproducibility import make_deterministic, provenance

TRAIN_TWICE = textwrap.dedent("""
    import hashlib, torch
    from backdoor_lens.util.reproducibility import make_deterministic
    assert make_deterministic(2) == 2
    import backdoor_lens as bl
    data = bl.ToyData(bl.ToyDataConfig(words_per_sentiment=60, train_per_sentiment=200, finetune_per_sentiment=50,
                                       val_per_sentiment=10, eval_per_class=8))
    model = bl.lab.sentiment_toy.build_model(bl.sentiment_toy_config(len(data.tokenizer), n_ctx=data.n_ctx, d_model=64))
    bl.train(model, torch.tensor(data.train["input_ids"]), bl.TrainConfig(epochs=2, lr=2e-3, batch_size=64), progress=False)
    print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
""")


def test_training_twice_with_two_threads_gives_identical_weights():
    digests = [
        subprocess.run([sys.executable, "-c", TRAIN_TWICE], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    ]
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def test_provenance_records_commit_threads_and_versions():
    threads = torch.get_num_threads()
    try:
        make_deterministic(1)
        record = provenance(argv=["make", "toy"])
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    assert record["command"] == "make toy" and record["torch_threads"] == 1 and record["deterministic_algorithms"]
    assert record["versions"]["torch"] and record["versions"]["transformer-lens"].startswith("3.")
    assert record["commit"] is None or len(record["commit"]) == 40
    assert isinstance(record["machine"]["cpu_capability"], str) and record["machine"]["cpu_capability"]  # e.g. AVX512
