"""End-to-end: the toy study on a tiny configuration writes every artifact and is reproducible."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from backdoor_lens.analysis.tune import TuneConfig
from backdoor_lens.data.toy import ToyDataConfig
from backdoor_lens.experiments.common.seeds import comparable
from backdoor_lens.experiments.toy import study as toy
from backdoor_lens.lm.training import TrainConfig

TINY = toy.ToyStudyConfig(
    data=ToyDataConfig(words_per_sentiment=40, train_per_sentiment=150, finetune_per_sentiment=100,
                       val_per_sentiment=10, eval_per_class=8, poison_rate=0.1),
    benign=TrainConfig(epochs=2, lr=3e-3, batch_size=64),
    poison=TrainConfig(epochs=2, lr=3e-3, batch_size=64, eval_every=2),
    tune=TuneConfig(n_trials=3),
    model_shape={"n_layers": 3, "n_heads": 4, "d_model": 16},
)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_a")
    summary = toy.run(TINY, out, progress=False, log=lambda *_: None)
    return out, summary


def test_writes_report_summary_and_figures(first_run):
    out, summary = first_run
    for name in ("report.md", "summary.json", "hidden_states_pca.png", "scaling_sweep.png", "freezing_curves.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for heading in ("Table I", "Table II", "Causal patching", "Tables III / IV", "Table V", "Table VI", "Table VII", "Freezing"):
        assert heading in report
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk["models"]) == {"sent2", "sent3"}
    edits = on_disk["models"]["sent2"]["edits"]
    assert {"none", "mean_ablate:blocks.0.mlp", "pcp:blocks.0.mlp:rank1", "pcp:blocks.0.mlp:rank2"} <= set(edits)
    assert set(edits["none"]["negativity"]) == {"p+p", "n+n", "p+n", "n+p", "p+t"}
    assert "s+t" in on_disk["models"]["sent3"]["edits"]["none"]["negativity"]
    assert set(on_disk["freezing"]["sent3"]) == set(TINY.freeze_sets)
    for m in on_disk["models"].values():
        for result in m["edits"].values():
            assert all(0.0 <= v["low"] <= v["value"] <= v["high"] <= 1.0 for v in result["negativity"].values())
            assert result["val_loss"] > 0


def test_frozen_modules_did_not_train(first_run):
    from backdoor_lens.models.storage import load_model

    out, _ = first_run
    benign, _ = load_model(out / "seed-0" / "models" / "sent2" / "benign")
    frozen, _ = load_model(out / "seed-0" / "models" / "sent2" / "freeze_blocks.0.mlp")
    free, _ = load_model(out / "seed-0" / "models" / "sent2" / "backdoored")
    assert (frozen.blocks[0].mlp.W_in == benign.blocks[0].mlp.W_in).all()
    assert not (free.blocks[0].mlp.W_in == benign.blocks[0].mlp.W_in).all()


def test_same_seed_gives_identical_summary(first_run, tmp_path):
    out, _ = first_run
    toy.run(TINY, tmp_path, progress=False, log=lambda *_: None)
    first, again = (comparable(json.loads((o / "summary.json").read_text())) for o in (out, tmp_path))
    assert first == again and "provenance" in json.loads((out / "summary.json").read_text())


def test_rerun_reuses_cached_models(first_run, monkeypatch):
    out, _ = first_run
    calls = []
    monkeypatch.setattr(toy, "train", lambda *a, **k: calls.append(1) or [])
    toy.run(TINY, out, progress=False, log=lambda *_: None)
    assert calls == []


def test_changed_config_retrains(first_run, tmp_path, monkeypatch):
    import shutil

    out, _ = first_run
    shutil.copytree(out / "seed-0" / "models", tmp_path / "seed-0" / "models")
    calls = []
    real_train = toy.train
    monkeypatch.setattr(toy, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    changed = replace(TINY, models=("sent2",), benign=replace(TINY.benign, epochs=1), freeze_sets={"none": ()})
    toy.run(changed, tmp_path, progress=False, log=lambda *_: None)
    assert len(calls) == 2  # the benign model and its poisoned fine-tune, both stale
