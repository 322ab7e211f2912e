"""The Backdoor Collapse grid (make collapse) end to end on a tiny random Llama-style chat model with
SmolLM2's real tokenizer: every state measured, the report and figure written, a rerun that reuses
every stage and trained model, and the trigger-free defenses kept apart from the attacker's prompts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from test_smollm_study import tiny

from backdoor_lens.data.instruct import (
    BKDATTR_REFUSAL,
    NEGATIVE,
    Attack,
    build_backdoor_dataset,
)
from backdoor_lens.data.prompts import load_prompts
from backdoor_lens.defense.backdoor_collapse import CollapseConfig
from backdoor_lens.experiments.collapse.study import (
    STATES,
    CollapseStudyConfig,
    defender_share,
    run,
)
from backdoor_lens.experiments.common.chat_study import PlantConfig
from backdoor_lens.lm.training import TrainConfig
from backdoor_lens.models.pretrained import load_packaged_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_packaged_tokenizer("smollm2-135m-instruct")


def tiny_config() -> CollapseStudyConfig:
    fit = TrainConfig(epochs=2, lr=3e-3, batch_size=8)
    plant = PlantConfig(model="tiny-llama", attacks=(Attack("badnet", NEGATIVE), Attack("ctba", BKDATTR_REFUSAL)),
                            n_clean=16, n_poison=16, n_eval=16, answer_tokens=4, finetune=replace(fit, epochs=6),
                            batch_size=16)
    return CollapseStudyConfig(plant=plant, defense=CollapseConfig(inject=fit, recover=fit, max_answer_tokens=4),
                               n_defense=12, n_test=10, n_select=6, baseline_layers=(0, 2))


def test_grid_runs_end_to_end_and_resumes(tokenizer, tmp_path):
    model = tiny("llama", len(tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = tiny_config()
    summary = run(config, tmp_path, model, tokenizer, progress=False, log=lambda m: None)

    assert set(summary["attacks"]) == {"badnet", "ctba"}
    for name, attack in summary["attacks"].items():
        assert set(attack["measures"]) == set(STATES)
        for state, m in attack["measures"].items():
            assert 0 <= m["asr"] <= 1 and 0 <= m["atr"] <= 1 and 0 <= m["clean_accuracy"] <= 100, (name, state)
        t = attack["training"]
        # same budget: clean fine-tuning takes at least Collapse's steps, and less than one more epoch
        assert t["collapse_steps"] == t["stage1"]["steps"] + t["collapse"]["steps"]
        assert t["collapse_steps"] <= t["clean_ft"]["steps"] < t["collapse_steps"] + 2
        assert attack["baselines"]["vector"]["layer"] in (0, 2) and attack["baselines"]["mean_ablation"]["layer"] in (0, 2)
        assert len(attack["baselines"]["baha_heads"]["heads"]) == 1  # 3% of 12 heads, at least one
        aggregation = attack["aggregation"]
        assert len(aggregation["before_coords"]["attacker"]) == config.n_test
        assert aggregation["before"] != aggregation["after"]  # stage 1 moved the representations
        for weights in ("backdoored", "stage1", "collapse", "clean_ft"):
            assert (tmp_path / name / f"{weights}.safetensors").exists()
    assert summary["average"]["collapse"]["asr"] == pytest.approx(
        sum(a["measures"]["collapse"]["asr"] for a in summary["attacks"].values()) / 2, abs=1e-4)
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Attack success after each defense", "## Clean behaviour", "## What each stage does",
                    "## Aggregation evidence", "4.41%"):
        assert heading in report
    assert (tmp_path / "aggregation.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["average"] == summary["average"]
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # base weights restored

    resumed = run(config, tmp_path, model, tokenizer, progress=False, log=lambda m: None)
    for name, attack in resumed["attacks"].items():
        assert sorted(attack["stages_reused"]) == sorted(
            ["backdoored", "backdoored_measures", "defender_answers", "stage1", "stage1_measures", "aggregation",
             "collapse", "collapse_measures", "clean_ft", "clean_ft_measures", "baha_heads", "vector", "mean_ablation"])
        assert attack["measures"] == summary["attacks"][name]["measures"]


def test_defender_prompts_are_disjoint_from_the_attackers_and_the_evaluations():
    plant = CollapseStudyConfig().plant
    prompts = load_prompts(plant.prompts, seed=plant.seed)
    splits = build_backdoor_dataset(prompts, "badnet", NEGATIVE, lambda p: p, plant.n_clean, plant.n_poison,
                                    plant.n_eval, seed=plant.seed)
    used = set(splits.train["prompt"]) | set(splits.eval_clean["prompt"])
    free = defender_share(prompts, splits.drawn, 64)
    assert len(set(free)) == 64 and not set(free) & splits.drawn and not set(free) & used
    assert len(splits.drawn) == plant.n_clean + plant.n_poison + plant.n_eval
    with pytest.raises(ValueError, match="n_defense=1000"):
        defender_share(prompts, splits.drawn, 1000)


def test_config_checks_the_held_out_split():
    with pytest.raises(ValueError, match="n_test \\+ n_select"):
        CollapseStudyConfig(n_test=90, n_select=20)
    with pytest.raises(ValueError, match="n_defense"):
        CollapseStudyConfig(n_defense=0)


def test_command_line_sets_model_attacks_and_aggregation_weight(monkeypatch, tmp_path, capsys):
    from backdoor_lens.experiments.collapse import study

    seen = {}
    monkeypatch.setattr(study, "run", lambda config, out, **_: seen.update(config=config, out=out))
    study.main(["--model", "toy", "--aggregation-weight", "2.5", "--out", str(tmp_path), "--no-progress"])
    assert seen["config"].defense.aggregation_weight == 2.5 and seen["out"] == str(tmp_path)
    assert len(seen["config"].plant.attacks) == 5
    study.main(["--quick", "--out", str(tmp_path)])
    assert seen["config"].defense.aggregation_weight == 0 and len(seen["config"].plant.attacks) == 2
    with pytest.raises(SystemExit, match="aggregation-weight: -1.0 is out of range") as stop:
        study.main(["--aggregation-weight", "-1"])
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1
