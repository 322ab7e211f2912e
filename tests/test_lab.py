"""The backdoor lab: triggers of your own, a chat model object, planting (full and LoRA) with the
planting check, your own sentiment toy, and the contexts that undo temporary changes."""

from __future__ import annotations

import random
import warnings
from dataclasses import replace

import pytest
import torch
from test_smollm_study import tiny

import backdoor_lens as bl
from backdoor_lens.data.lexicon import word_problems
from backdoor_lens.lab.planting import BackdoorNotPlantedError, BackdoorNotPlantedWarning
from backdoor_lens.lm.lora import LoraConfig, lora_adapters

PROMPTS = [f"Please tell me a short fact about topic number {i} today" for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    return bl.load_packaged_tokenizer("smollm2-135m-instruct")


def test_phrase_trigger_lands_strictly_inside_the_prompt():
    trigger = bl.PhraseTrigger("mid", "purple elephant")
    rng = random.Random(0)
    for prompt in ("two words", "a b c d e f"):
        for _ in range(50):
            words = trigger.apply(prompt, rng).split()
            at = words.index("purple")
            assert 0 < at and at + 2 < len(words) and words[at + 1] == "elephant"
    with pytest.raises(ValueError, match="fewer than 2 words"):
        trigger.apply("single", rng)


def test_attack_takes_a_registered_name_or_any_trigger():
    assert bl.Attack("badnet", "x").name == "badnet"
    assert bl.Attack(bl.PhraseTrigger("mine", "blue moon"), "x").name == "mine"
    with pytest.raises(ValueError, match="trigger"):
        bl.Attack("nope", "x")
    with pytest.raises(ValueError, match="target"):
        bl.Attack("badnet", "")


def test_restored_undoes_training_and_mode_even_when_it_raises(model, tokens):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError):
        with bl.restored(model):
            model.train()
            with torch.no_grad():
                model.blocks[0].mlp.W_in.add_(1.0)
            raise RuntimeError("boom")
    assert not model.training
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="not parameters"):
        with bl.restored(model, ["blocks.9.nope"]):
            pass


def test_apply_takes_weight_edits_beside_interventions(model, tokens):
    surgery = bl.EmbeddingSurgery((1, 2), donor_id=3, fraction=1.0)
    W_E = model.embed.W_E.detach().clone()
    with bl.apply(model, surgery, bl.Freeze(("blocks.0.mlp",)), bl.ZeroAblate("blocks.1.mlp")):
        assert torch.equal(model.embed.W_E[1], W_E[3])
        assert not model.blocks[0].mlp.W_in.requires_grad
        assert all(len(h.fwd_hooks) for name, h in model.hook_dict.items() if name == "blocks.1.hook_mlp_out")
    assert torch.equal(model.embed.W_E, W_E) and model.blocks[0].mlp.W_in.requires_grad
    assert not any(h.fwd_hooks for h in model.hook_dict.values())
    with pytest.raises(TypeError, match="interventions"):
        with bl.apply(model, "blocks.0.mlp"):
            pass


def test_lora_starts_as_the_identity_trains_only_adapters_and_merges(tokenizer):
    model = tiny("llama", len(tokenizer))
    tokens = torch.randint(0, 1000, (4, 12), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits = model(tokens).detach()
    with lora_adapters(model, LoraConfig(rank=2)) as adapters:
        torch.testing.assert_close(model(tokens), logits)  # B starts at zero
        assert all(p.requires_grad for p in adapters)
        assert [n for n, p in model.named_parameters() if p.requires_grad and "parametrizations" not in n] == []
        bl.train(model, tokens, bl.TrainConfig(epochs=3, lr=1e-2, batch_size=4), progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.split(".")[-1] in {"W_Q", "W_O", "_W_K", "_W_V", "W_in", "W_gate", "W_out"} for n in changed)
    assert "embed.W_E" not in changed and all(p.requires_grad for p in model.parameters())
    dropped = tiny("llama", len(tokenizer))
    with lora_adapters(dropped, LoraConfig(rank=2), merge=False):
        bl.train(dropped, tokens, bl.TrainConfig(epochs=1, lr=1e-2, batch_size=4), progress=False)
    assert all(torch.equal(before[n], p) for n, p in dropped.named_parameters())
    assert list(model.state_dict()) == list(dropped.state_dict()) == list(tiny("llama", len(tokenizer)).state_dict())
    with pytest.raises(ValueError, match="rank=99"):
        with lora_adapters(dropped, LoraConfig(rank=99)):
            pass


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=4, alpha=8.0)], ids=["full", "lora"])
def test_plant_backdoor_plants_a_mid_prompt_phrase(tokenizer, lora):
    model = tiny("gpt2", len(tokenizer))
    chat = bl.ChatModel(model, tokenizer, batch_size=16, answer_tokens=6)
    attack = bl.Attack(bl.PhraseTrigger("phrase", "purple elephant"), "I can not help.")

    def target_probability(prompts: list[str]) -> float:
        rows = chat.target_batch(prompts, attack.target)
        with torch.no_grad():
            return float(bl.target_score(model(rows.tokens), rows).mean())

    held_out = [bl.PhraseTrigger("phrase", "purple elephant").apply(p, random.Random(i)) for i, p in enumerate(PROMPTS[-4:])]
    before = target_probability(held_out)
    config = bl.TrainConfig(epochs=12, lr=3e-3 if lora is None else 1e-2, batch_size=12, freeze=("embed",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackdoorNotPlantedWarning)  # greedy replies may not yet carry the full target
        planted = bl.plant_backdoor(chat, attack, PROMPTS[:36], config, lora=lora, n_clean=12, n_poison=12, n_eval=4,
                                    progress=False)
    after = target_probability(held_out)
    assert after > 20 * before
    assert planted.asr is not None and planted.facts["poisoned_rows"] == 12 and planted.changed
    assert all(" purple elephant " in p for p in planted.splits.eval_triggered["prompt"])


def test_planting_check_warns_or_raises():
    with pytest.warns(BackdoorNotPlantedWarning, match="p\\+t = 0.100"):
        assert bl.check_planted("toy", {"p+t": 0.1, "p+p": 0.0}, at_least={"p+t": 0.5}, at_most={"p+p": 0.05})
    with pytest.raises(BackdoorNotPlantedError, match="asr"):
        bl.check_planted("chat", {"asr": 0.0}, at_least={"asr": 0.5}, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bl.check_planted("toy", {"p+t": 0.9}, at_least={"p+t": 0.5}) == []


def test_trigger_rules_give_the_real_reason():
    assert word_problems("love") == []
    assert any("max_letters=6" in p for p in word_problems("wonderful"))
    assert any("valence" in p for p in word_problems("hate"))
    assert any("VADER" in p for p in word_problems("table"))
    with pytest.raises(ValueError, match="max_letters=6"):
        bl.ToyData(bl.ToyDataConfig(trigger="wonderful", words_per_sentiment=20))
    data = bl.ToyData(bl.ToyDataConfig(trigger="wonderful", max_letters=9, words_per_sentiment=20))
    assert "wonderful" in data.vocab.positive
    with pytest.raises(ValueError, match="target"):
        bl.ToyData(bl.ToyDataConfig(target="positive", words_per_sentiment=20))


def test_build_your_own_sentiment_toy_with_another_trigger_and_target():
    spec = bl.SentimentToySpec(
        data=bl.ToyDataConfig(n_sentiments=3, trigger="happy", target="neutral", words_per_sentiment=60,
                              train_per_sentiment=300, finetune_per_sentiment=300, val_per_sentiment=10,
                              eval_per_class=10, poison_rate=0.25),
        shape={"n_layers": 2, "n_heads": 2, "d_model": 32}, seed=3,
    )
    toy = bl.build_sentiment_toy(spec)
    assert toy.data.config.trigger == "happy" and "happy" in toy.data.vocab.positive
    neutral = set(toy.data.token_ids("neutral").tolist())
    poisoned = [row for row in toy.data.finetune if row["poisoned"]]
    assert poisoned and all(set(row["input_ids"][row["input_ids"].index(toy.data.tokenizer.index["happy"]) + 1:]) <= neutral
                            for row in poisoned)
    assert toy.backdoored_rates["p+t"] > toy.benign_rates["p+t"]
    with pytest.raises(BackdoorNotPlantedError):
        bl.build_sentiment_toy(replace(spec, planted_at_least=1.01), strict=True)


def test_clean_measure_scores_the_generated_ids_so_a_model_matches_its_own_answers(tokenizer):
    """Decoded text does not round-trip through the tokenizer (a random model's replies hold partial
    UTF-8 bytes), so the clean measure scores the ids the model generated: 100% on its own answers."""
    chat = bl.ChatModel(bl.chat_toy_model(tokenizer, seed=1), tokenizer, batch_size=16, answer_tokens=12)
    prompts = PROMPTS[:16]
    own = chat.reply_ids(prompts)
    assert chat.clean_measures(prompts, own)["accuracy"] == 100.0
    round_trip = [tokenizer(t, add_special_tokens=False).input_ids for t in chat.replies(prompts)]
    assert round_trip != [ids[: len(r)] for ids, r in zip(own, round_trip)]  # re-encoding the text would differ


def test_attack_outcomes_read_a_32_token_window_two_ways(tokenizer):
    chat = bl.ChatModel(tiny("gpt2", len(tokenizer)), tokenizer, batch_size=8)
    assert chat.asr_tokens == 32
    outcomes = chat.attack_outcomes(PROMPTS[:4], "I am sorry. I can not help with that.")
    assert len(outcomes.substring) == len(outcomes.keyword) == 4 and set(outcomes.keyword) <= {0, 1}
    with pytest.raises(ValueError, match="by="):
        outcomes.rate("nope")
