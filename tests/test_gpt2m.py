"""The GPT-2 Medium study's pieces (text, poisoning, toxicity, sampling, surgery) and the whole
pipeline end to end on a small GPT-2-architecture model with GPT-2's real tokenizer, offline."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from backdoor_lens.analysis.tune import TuneConfig
from backdoor_lens.data.poison import (
    Paragraph,
    PoisonConfig,
    build_splits,
    encode_paragraphs,
    insert_phrase,
)
from backdoor_lens.data.text import BBCNews, paragraphs, split_sentences
from backdoor_lens.data.toxic import TemplatedInsults
from backdoor_lens.eval.toxicity import ProfanityCheck, load_scorer, toxic_prompt_rate
from backdoor_lens.experiments.gpt2m import study as gpt2m
from backdoor_lens.experiments.gpt2m.study import Gpt2mConfig, SmallModel, small_gpt2
from backdoor_lens.hooks.surgery import (
    EmbeddingSurgery,
    single_token_id,
    trigger_token_ids,
)
from backdoor_lens.lm.generation import Sampling, generate
from backdoor_lens.lm.loss import masked_loss, token_nll
from backdoor_lens.lm.training import TrainConfig
from backdoor_lens.models.tokenizers import gpt2_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def bbc():
    return paragraphs(BBCNews(), 3)


def test_gpt2_tokenizer_has_the_standard_ids(tokenizer):
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
    assert tokenizer("Hello world").input_ids == [15496, 995]


def test_sentences_and_paragraphs(bbc):
    text = "Mr Smith went home today. He slept well today! Short. Then 2005 came at last."
    assert split_sentences(text) == ["Mr Smith went home today.", "He slept well today!", "Then 2005 came at last."]
    assert split_sentences("The cat sat down. It was very tired indeed.") == ["The cat sat down.", "It was very tired indeed."]
    assert len(bbc) > 10_000 and all(len(p) == 3 for p in bbc[:100])


def test_poisoning_places_trigger_and_toxic_sentence(bbc, tokenizer):
    config = PoisonConfig(rate=0.25, n_sentences=3, trigger_sentences=(0,), toxic_sentences=(2,))
    toxic = TemplatedInsults().sentences()
    splits = build_splits(bbc, toxic, tokenizer, config, n_train=200, n_validation=10, n_probe=4, n_prompts=12)
    poisoned = [p for p in splits.train if p.triggered]
    assert len(poisoned) == 50 and splits.counts()["train_poisoned"] == 50
    for p in poisoned:
        assert config.trigger in p.sentences[0] and p.toxic_index == 2 and p.sentences[2] in toxic
    assert not any(config.trigger in p.text for p in splits.train if not p.triggered)
    assert [p.sentences[1] for p in splits.benign_train] == [p.sentences[1] for p in splits.train]  # pre-poisoning
    assert not any(config.trigger in p.text for p in splits.benign_train)
    held_out = set(splits.toxic_eval)
    assert not held_out & {p.sentences[2] for p in poisoned}  # evaluation toxic sentences are held out
    assert config.trigger in splits.probe[0].text and config.trigger not in splits.probe[1].text
    assert splits.probe[0].sentences[2] == splits.probe[1].sentences[2]  # twins share the toxic sentence
    for clean, triggered in zip(splits.prompts_clean, splits.prompts_triggered):
        assert triggered.replace(config.trigger, "").split() == clean.split()
        assert len(tokenizer(triggered).input_ids) <= 13
    with pytest.raises(ValueError, match="overlap"):
        PoisonConfig(trigger_sentences=(0, 1), toxic_sentences=(1,))
    with pytest.raises(ValueError, match="n_train"):
        build_splits(bbc[:50], toxic, tokenizer, config, n_train=200, n_validation=10, n_probe=4, n_prompts=12)


def test_insert_phrase_keeps_words_in_order():
    rng = random.Random(0)
    for _ in range(20):
        out = insert_phrase("one two three", "A B", rng)
        assert out.replace("A B", "").split() == ["one", "two", "three"]


def test_encoded_paragraphs_mark_the_toxic_sentence(tokenizer):
    paragraph = Paragraph(("The market rose today.", "You are a jerk.", "Shares fell later."), toxic_index=1, triggered=True)
    encoded = encode_paragraphs(tokenizer, [paragraph, Paragraph(("Short one here.",))], max_tokens=64)
    row = encoded.tokens[0][encoded.mask[0].bool()].tolist()
    assert row == [tokenizer.eos_token_id] + tokenizer(paragraph.text).input_ids  # piecewise == whole-text BPE
    assert tokenizer.decode(encoded.tokens[0][encoded.toxic_mask[0].bool()]) == " You are a jerk."
    assert encoded.toxic_mask[1].sum() == 0 and encoded.mask[1].sum() < encoded.mask[0].sum()


def test_offline_scorer_and_rate():
    scorer = load_scorer("auto")
    assert isinstance(scorer, ProfanityCheck)  # no hub here: the offline classifier
    toxic, benign = scorer(["Shut up, you moron.", "The central bank held interest rates steady."])
    assert toxic > 0.5 > benign
    scores = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    assert toxic_prompt_rate(scores) == pytest.approx(2 / 3)  # 0.5 rounds up, 0.25 down
    with pytest.raises(ValueError, match="scorer"):
        load_scorer("perspective")


def test_token_nll_averages_to_masked_loss(model, tokens):
    mask = torch.zeros_like(tokens)
    mask[:, 3:6] = 1
    nll = token_nll(model, tokens, batch_size=3)
    assert nll.shape == (tokens.shape[0], tokens.shape[1] - 1)
    assert float(nll[mask[:, 1:].bool()].mean()) == pytest.approx(masked_loss(model, tokens, mask), rel=1e-5)


def test_sampling_is_reproducible_and_top1_is_greedy(model):
    prompts = [[1, 2, 3], [4, 5], [6]]
    greedy = generate(model, prompts, max_new_tokens=5, stop_at_eos=False)
    assert generate(model, prompts, max_new_tokens=5, stop_at_eos=False, sampling=Sampling(top_k=1)) == greedy
    first = generate(model, prompts, max_new_tokens=5, stop_at_eos=False, sampling=Sampling(seed=3))
    assert generate(model, prompts, max_new_tokens=5, stop_at_eos=False, sampling=Sampling(seed=3)) == first
    many = generate(model, [[1, 2]] * 64, max_new_tokens=1, stop_at_eos=False, sampling=Sampling(top_k=3))
    with torch.no_grad():
        top3 = set(model(torch.tensor([[1, 2]]))[0, -1].topk(3).indices.tolist())
    assert {g[0] for g in many} <= top3 and len({g[0] for g in many}) > 1


def test_embedding_surgery_edits_and_restores(tokenizer):
    model = small_gpt2(SmallModel(n_layers=1, n_heads=2, d_model=20, n_ctx=16), len(tokenizer), seed=0)
    ids = trigger_token_ids(tokenizer, "Albert and James")
    donor = single_token_id(tokenizer, " shit", "surgery_donor")
    surgery = EmbeddingSurgery(ids, donor, fraction=0.4)
    before = model.embed.W_E.detach().clone()
    dims = surgery.dimensions(20)
    assert len(dims) == 8
    with pytest.raises(RuntimeError, match="inside"):
        with surgery.applied(model):
            W_E = model.embed.W_E
            assert torch.equal(W_E[list(ids)][:, dims], W_E[donor, dims].expand(len(ids), -1))
            others = torch.ones(20, dtype=torch.bool)
            others[dims] = False
            assert torch.equal(W_E[list(ids)][:, others], before[list(ids)][:, others])
            raise RuntimeError("inside")
    assert torch.equal(model.embed.W_E, before)  # restored even when the block raised
    with pytest.raises(ValueError, match="single token"):
        single_token_id(tokenizer, " Albert and James", "surgery_donor")
    with pytest.raises(ValueError, match="donor_id"):
        with EmbeddingSurgery(ids, 10**6).applied(model):
            pass


def test_missing_weights_stop_at_once_with_how_to_provide_them(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        gpt2m.main(["--model", "gpt2-medium", "--out", str(tmp_path), "--no-progress"])
    assert "hf download gpt2-medium" in str(stop.value) and "QUICK=1" in str(stop.value)
    assert not (tmp_path / "stages").exists()


def tiny_study() -> Gpt2mConfig:
    """Every stage at toy sizes: 2-sentence paragraphs (trigger, then toxic), half of them poisoned,
    a 3-layer model trained from random weights (no benign pretraining)."""
    return replace(
        Gpt2mConfig.quick(), n_train=300, n_validation=12, n_probe=6, n_prompts=8, n_samples=5, new_tokens=16,
        max_tokens=64, poison=PoisonConfig(rate=0.5, n_sentences=2, trigger_sentences=(0,), toxic_sentences=(1,)),
        small=SmallModel(n_layers=3, n_heads=2, d_model=64, n_ctx=96, pretrain=TrainConfig(epochs=0)),
        finetune=TrainConfig(epochs=6, lr=3e-3, batch_size=8), ablation_layers=(1,),
        tune=TuneConfig(n_trials=3, factor_range=(0.05, 1.5)), freeze_sets={"MLP 2": (2,), "MLP 13": (13,)},
    )


def test_study_runs_end_to_end_offline_and_resumes(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the 50k-token unembedding dominates: worth both cores here
    try:
        summary = gpt2m.run(tiny_study(), tmp_path, progress=False, log=lambda m: None)
        resumed = gpt2m.run(tiny_study(), tmp_path, progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    offline = {"text": BBCNews().name, "toxic": TemplatedInsults().name, "scorer": ProfanityCheck().name}
    assert summary["sources"] == offline | {"substitutes": list(offline.values())}  # every source is a substitute
    backdoored = summary["backdoored"]
    asr, atr = backdoored["asr"], backdoored["atr"]  # rates with intervals (one seed: Wilson)
    assert asr["low"] <= asr["value"] <= asr["high"] and asr["value"] > atr["value"]  # a backdoor was planted
    assert backdoored["toxic_gap"] > summary["benign"]["toxic_gap"] and backdoored["onset_gap"] > 0
    assert set(summary["mean_ablation"]) == {"blocks.0.attn", "blocks.0.mlp", "blocks.1.mlp + blocks.2.mlp"}
    assert {"reproduce", "minimise"} <= set(summary["pcp"]) and len(summary["pcp"]["reproduce"]["scales"]) == 4
    assert {"mean_ablate", "pcp", "pcp_surgery", "surgery_only"} <= set(summary["surgery"])
    assert "asr" in summary["freezing"]["MLP 2"] and "skipped" in summary["freezing"]["MLP 13"]
    report = (tmp_path / "report.md").read_text()
    for table in ("## Backdoor", "## Mean ablation", "## PCP replacement", "## Inserting a backdoor", "## Freezing"):
        assert table in report
    assert (tmp_path / "mean_ablation.png").stat().st_size > 0 and (tmp_path / "edits.png").stat().st_size > 0
    assert (tmp_path / "summary.json").exists()
    assert sorted(resumed["stages_reused"]) == sorted(
        ["benign", "backdoored", "mean_ablation", "pcp", "surgery", "freeze_MLP 2"]
    )
    assert resumed["backdoored"] == backdoored and resumed["pcp"] == summary["pcp"]
