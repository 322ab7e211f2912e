"""Bad settings end at once: every entry point, run as a subprocess with each bad value, exits with
code 2 and a one-line ``<prog>: error: ...`` in under 5 s, before any model is loaded or trained
(the command line is checked before the slow imports). Also: NaN and inf never pass a range check,
and a training that diverges leaves the model as it was before the failing step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from backdoor_lens.experiments.common.cli import FolderLock
from backdoor_lens.lm import TrainConfig, train
from backdoor_lens.models.toy import build_model, sentiment_toy_config
from backdoor_lens.util.validation import check_range

ROOT = Path(__file__).resolve().parents[1]
TOY, SMOLLM, COLLAPSE, GPT2M = (["-m", f"backdoor_lens.experiments.{name}"] for name in ("toy", "smollm", "collapse", "gpt2m"))
BENCH, COST = ["benchmarks/bench_baha.py"], ["benchmarks/gpt2m_cost.py"]
NO_GPU = "cuda:99" if torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """A file (not a folder), a missing model path, a folder with pickled weights only, a busy folder."""
    root = tmp_path_factory.mktemp("bad")
    (root / "file").write_text("x")
    pickled = root / "pickled-model"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    return {"FILE": str(root / "file"), "MISSING": str(root / "no-such-model"), "PICKLED": str(pickled),
            "BUSY": str(root / "busy"), "DIR": str(root)}


CASES = [  # (entry point, arguments, what the one-line error must say)
    (TOY, ["--trials", "0"], "argument --trials: 0 is out of range; valid: 1..100000"),
    (TOY, ["--trials", "1e9"], "argument --trials: '1e9' is not a whole number"),
    (TOY, ["--trials", "1000000000"], "argument --trials: 1000000000 is out of range"),
    (TOY, ["--seed", "-1"], "argument --seed"),  # --seed, or --seeds for which it is an abbreviation
    (TOY, ["--seed", "4294967296"], "argument --seed"),
    (TOY, ["--threads", "0"], "argument --threads: 0 is out of range"),
    (TOY, ["--out", "FILE/sub"], "is a file, so nothing can be created under it"),
    (TOY, ["--out", "FILE"], "exists and is not a folder"),
    (TOY, ["--storage", "bogus://x"], "database 'bogus' is not supported"),
    (TOY, ["--storage", "postgresql://nobody@127.0.0.1:1/optuna"], "postgresql://nobody@127.0.0.1:1/optuna"),
    (TOY, ["--storage", "sqlite:////no/such/folder/optuna.db"], "cannot connect to sqlite:////no/such/folder/optuna.db"),
    (TOY, ["--storage", "FILE/optuna.journal"], "is a file, so nothing can be created under it"),
    (TOY, ["--out", "BUSY"], "is in use by another run (pid"),
    (SMOLLM, ["--model", "MISSING"], "is not a directory"),
    (SMOLLM, ["--model", "PICKLED"], "it has only ['pytorch_model.bin'], which are pickled and refused"),
    (SMOLLM, ["--out", "FILE/sub"], "is a file"),
    (COLLAPSE, ["--model", "MISSING"], "is not a directory"),
    (COLLAPSE, ["--model", "PICKLED"], "which are pickled and refused"),
    (COLLAPSE, ["--aggregation-weight", "nan"], "argument --aggregation-weight: 'nan' is not finite"),
    (COLLAPSE, ["--aggregation-weight", "inf"], "argument --aggregation-weight: 'inf' is not finite"),
    (COLLAPSE, ["--aggregation-weight", "-1"], "argument --aggregation-weight: -1.0 is out of range"),
    (GPT2M, ["--device", "bogus"], "argument --device: 'bogus' is not a device; valid: auto, cpu, cuda, cuda:N, mps"),
    (GPT2M, ["--device", NO_GPU], "use --device cpu"),
    (GPT2M, ["--model", "PICKLED"], "which are pickled and refused"),
    (GPT2M, ["--model", "gpt2-medium"], "`hf download gpt2-medium --local-dir DIR`"),
    (GPT2M, ["--out", "FILE/sub"], "is a file"),
    (BENCH, ["--repeats", "0"], "argument --repeats: 0 is out of range"),
    (BENCH, ["--chat-prompts", "0"], "argument --chat-prompts: 0 is out of range"),
    (BENCH, ["--batch-heads", "0"], "argument --batch-heads: 0 is out of range"),
    (BENCH, ["--device", "bogus"], "'bogus' is not a device"),
    (BENCH, ["--device", NO_GPU], "use --device cpu"),
    (BENCH, ["--models", "toy", "MISSING"], "is not a directory"),
    (BENCH, ["--models", "PICKLED"], "which are pickled and refused"),
    (BENCH, ["--out", "DIR"], "is a folder; give a file path"),
    (COST, ["--steps", "-1"], "argument --steps: -1 is out of range"),
    (COST, ["--steps", "0"], "argument --steps: 0 is out of range"),
    (COST, ["--device", "bogus"], "'bogus' is not a device"),
    (COST, ["--device", NO_GPU], "use --device cpu"),
    (COST, ["--out", "FILE/cost.json"], "is a file"),
]


def run_case(entry: list[str], args: list[str], places: dict[str, str]) -> tuple[int, str, float]:
    args = [next((a.replace(k, v) for k, v in places.items() if a.startswith(k)), a) for a in args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *entry, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stderr + proc.stdout, time.perf_counter() - start


def test_every_entry_point_refuses_each_bad_value_in_one_line_and_seconds(places):
    with FolderLock(places["BUSY"]), ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: run_case(case[0], case[1], places), CASES))
    rows, failures = [], []
    for (entry, args, needle), (code, output, seconds) in zip(CASES, results):
        name = entry[-1].split(".")[-1] if entry[0] == "-m" else Path(entry[-1]).stem
        lines = output.strip().splitlines()
        ok = code == 2 and len(lines) == 1 and ": error: " in lines[0] and needle in lines[0] and seconds < 5
        rows.append(f"| {name} | {' '.join(args)} | {code} | {seconds:.2f} s | {lines[0] if lines else ''} |")
        if not ok:
            failures.append((name, args, code, seconds, output[-800:]))
    print("\n| entry point | arguments | exit | time | error |\n|---|---|---|---|---|\n" + "\n".join(rows))
    assert failures == []


def test_check_range_refuses_nan_and_inf():
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="is not finite"):
            check_range("lr", value, 0.0)


@pytest.mark.parametrize("lr, error, message", [
    (1e30, FloatingPointError, "lower lr="),  # the loss or the weights become non-finite
    (1e-3, RuntimeError, "the optimiser's step failed"),  # any other error in a step (raised on the 5th)
])
@pytest.mark.parametrize("was_training", [False, True])
def test_diverging_training_restores_mode_and_weights(monkeypatch, was_training, lr, error, message):
    training = sys.modules[train.__module__]
    torch.manual_seed(0)
    model = build_model(sentiment_toy_config(d_vocab=20, n_ctx=8, n_layers=2, n_heads=2, d_model=8))
    model.train(was_training)
    tokens = torch.randint(0, 20, (32, 8), generator=torch.Generator().manual_seed(0))
    steps: list[dict[str, torch.Tensor]] = []
    real_loss = training.next_token_loss

    def recording_loss(*args, **kwargs):  # a step starts with its loss: record the weights it starts from
        steps.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return real_loss(*args, **kwargs)

    real_step = torch.optim.AdamW.step

    def failing_step(self, *args, **kwargs):
        if len(steps) == 5:
            raise RuntimeError("the optimiser's step failed")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(training, "next_token_loss", recording_loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(error, match=message):
        train(model, tokens, TrainConfig(epochs=200, lr=lr, batch_size=8), progress=False)
    assert model.training == was_training
    weights = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in weights.values())
    assert all(torch.equal(weights[n], value) for n, value in steps[-1].items())
