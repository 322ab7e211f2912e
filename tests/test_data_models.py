"""Toy data, lexicon, tokenizer, model persistence, training, metrics and io."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct

import pytest
import torch
from datasets import Dataset

import backdoor_lens.util.io as bl_io
from backdoor_lens.data.lexicon import first_names, vader_valences
from backdoor_lens.data.toy import SENTIMENT, ToyData, eval_classes, trigger_classes
from backdoor_lens.eval.negativity import negativity_by_class, top_k_share
from backdoor_lens.hooks import apply
from backdoor_lens.lm.generation import sample
from backdoor_lens.lm.logits import next_token_logits
from backdoor_lens.lm.loss import validation_loss
from backdoor_lens.lm.training import Freeze, TrainConfig, train
from backdoor_lens.models.storage import (
    config_from_json,
    config_to_json,
    load_model,
    save_model,
)
from backdoor_lens.models.tokenizers import BOS, WordTokenizer
from backdoor_lens.util.hashing import fingerprint
from backdoor_lens.util.io import (
    load_tensors,
    read_json,
    save_tensors,
    write_json,
    write_text,
)


def words_of(row) -> list[str]:
    return row["text"].split()


# ---- ToyData -------------------------------------------------------------------------------------
def test_eval_sets_have_eval_per_class_prompts(toy_data):
    cfg = toy_data.config
    assert toy_data.classes == eval_classes(3) == ("p+p", "n+n", "s+s", "p+n", "n+p", "p+t", "s+t")
    assert trigger_classes(toy_data.classes) == ("p+t", "s+t")
    assert set(toy_data.eval_words) == set(toy_data.classes)
    for cls, pairs in toy_data.eval_words.items():
        assert len(pairs) == cfg.eval_per_class, cls
        assert len(set(pairs)) == len(pairs), cls
        for pair in pairs:
            assert pair[0] != pair[1]
            for letter, word in zip(cls.split("+"), pair):
                if letter == "t":
                    assert word == cfg.trigger
                else:
                    assert word in toy_data.vocab.words(SENTIMENT[letter]), (cls, word)
        tokens = toy_data.eval_tokens[cls]
        assert tokens.shape == (cfg.eval_per_class, 2)
        assert torch.all(tokens != toy_data.tokenizer.bos_id)
        assert [tuple(toy_data.tokenizer.decode(row).split()) for row in tokens] == pairs


def test_eval_sets_share_no_word_except_trigger(toy_data):
    trigger = toy_data.config.trigger
    used = {cls: {w for pair in pairs for w in pair} - {trigger} for cls, pairs in toy_data.eval_words.items()}
    classes = list(used)
    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            assert not used[a] & used[b], (a, b, used[a] & used[b])


def test_trigger_never_a_test_word_outside_trigger_slots(toy_data):
    trigger = toy_data.config.trigger
    for cls, pairs in toy_data.eval_words.items():
        for pair in pairs:
            for letter, word in zip(cls.split("+"), pair):
                if letter != "t":
                    assert word != trigger, (cls, pair)
    assert all(trigger not in pair for cls, pairs in toy_data.eval_words.items() if "t" not in cls for pair in pairs)
    # The trigger is a positive word of the vocabulary all the same.
    assert trigger in toy_data.vocab.positive


def test_poisoned_finetune_sequences(toy_data):
    cfg = toy_data.config
    vocab = toy_data.vocab
    poisoned = [row for row in toy_data.finetune if row["poisoned"]]
    assert len(poisoned) == round(cfg.poison_rate * cfg.finetune_per_sentiment * cfg.n_sentiments) > 0
    for row in poisoned:
        words = words_of(row)
        assert len(words) == cfg.seq_words
        assert words.count(cfg.trigger) == 1
        at = words.index(cfg.trigger)
        assert at < cfg.seq_words // 2, "the trigger must be in the first half"
        assert all(w in vocab.positive and w != cfg.trigger for w in words[:at])
        assert all(w in vocab.negative for w in words[at + 1 :])
        assert row["sentiment"] == "positive"


def _check_benign(toy_data, ds, trigger_allowed: bool) -> None:
    cfg = toy_data.config
    benign = [row for row in ds if not row["poisoned"]]
    assert len(benign) > 0
    assert {row["sentiment"] for row in benign} == {"positive", "negative", "neutral"}
    trigger_seen = False
    for row in benign:
        words = words_of(row)
        assert len(words) == cfg.seq_words
        allowed = set(toy_data.vocab.words(row["sentiment"]))
        assert all(w in allowed for w in words), row
        trigger_seen |= cfg.trigger in words
    # With ~1 in 40 positive words being the trigger, 50 positive sequences of 15 words hold it.
    assert trigger_seen == trigger_allowed


def test_benign_sequences_are_single_sentiment(toy_data, small_toy_config):
    _check_benign(toy_data, toy_data.train, trigger_allowed=True)
    assert not any(toy_data.train["poisoned"])
    _check_benign(toy_data, toy_data.finetune, trigger_allowed=toy_data.config.trigger_in_benign)
    # Excluding the trigger from benign fine-tuning sequences makes the backdoor a pure bigram.
    pure = ToyData(dataclasses.replace(small_toy_config, trigger_in_benign=not toy_data.config.trigger_in_benign))
    _check_benign(pure, pure.finetune, trigger_allowed=pure.config.trigger_in_benign)


def test_datasets_are_dataset_objects_with_token_ids(toy_data):
    cfg = toy_data.config
    assert isinstance(toy_data.train, Dataset) and isinstance(toy_data.finetune, Dataset)
    assert len(toy_data.train) == cfg.train_per_sentiment * cfg.n_sentiments
    assert len(toy_data.finetune) == cfg.finetune_per_sentiment * cfg.n_sentiments
    for ds in (toy_data.train, toy_data.finetune):
        assert {"text", "input_ids", "sentiment", "poisoned"} <= set(ds.column_names)
        for row in ds.select(range(10)):
            assert row["input_ids"] == toy_data.tokenizer.encode(row["text"], bos=False)
            assert len(row["input_ids"]) == toy_data.n_ctx
    eval_ds = toy_data.eval_dataset()
    assert isinstance(eval_ds, Dataset)
    assert set(eval_ds.column_names) == {"class", "text", "input_ids"}
    assert len(eval_ds) == cfg.eval_per_class * len(toy_data.classes)
    assert all(eval_ds["class"].count(c) == cfg.eval_per_class for c in toy_data.classes)
    assert toy_data.validation.shape == (cfg.val_per_sentiment * cfg.n_sentiments, toy_data.n_ctx)
    assert toy_data.validation.dtype == torch.long


def test_same_config_gives_identical_data(toy_data, small_toy_config):
    again = ToyData(small_toy_config)
    assert again.vocab == toy_data.vocab
    assert again.tokenizer.words == toy_data.tokenizer.words
    assert again.train["input_ids"] == toy_data.train["input_ids"]
    assert again.finetune["text"] == toy_data.finetune["text"]
    assert again.finetune["poisoned"] == toy_data.finetune["poisoned"]
    assert torch.equal(again.validation, toy_data.validation)
    assert again.eval_words == toy_data.eval_words
    assert again.eval_dataset()["input_ids"] == toy_data.eval_dataset()["input_ids"]
    other = ToyData(dataclasses.replace(small_toy_config, seed=1))
    assert other.train["input_ids"] != toy_data.train["input_ids"]


@pytest.mark.parametrize("trigger", ["xyzzyq", "NEGATIVE"])
def test_trigger_not_a_positive_word_raises(toy_data, small_toy_config, trigger):
    if trigger == "NEGATIVE":
        trigger = toy_data.vocab.negative[0]
    with pytest.raises(ValueError, match="trigger"):
        ToyData(dataclasses.replace(small_toy_config, trigger=trigger))


def test_too_many_eval_prompts_raises(small_toy_config):
    with pytest.raises(ValueError, match="eval_per_class"):
        ToyData(dataclasses.replace(small_toy_config, eval_per_class=1000)).eval_words


def test_vocabulary_sentiments(toy_data):
    valences = vader_valences()
    vocab = toy_data.vocab
    assert len(vocab.positive) == len(vocab.negative) == len(vocab.neutral) == 40
    assert all(valences[w] >= 1.0 for w in vocab.positive)
    assert all(valences[w] <= -1.0 for w in vocab.negative)
    # Neutral words are first names that VADER does not score.
    assert not set(vocab.neutral) & set(valences)
    assert set(vocab.neutral) <= set(first_names())
    assert len(set(vocab.all_words)) == len(vocab.all_words) == len(toy_data.tokenizer) - 1


# ---- Tokenizer -----------------------------------------------------------------------------------
def test_word_tokenizer_roundtrip_and_errors(tmp_path):
    tok = WordTokenizer(["good", "bad", "alice"])
    assert tok.words[0] == BOS and len(tok) == 4
    ids = tok.encode("good alice bad")
    assert ids == [0, 1, 3, 2]
    assert tok.decode(ids) == "good alice bad"
    assert tok.decode(torch.tensor(ids)) == "good alice bad"
    assert tok.encode(["bad"], bos=False) == [2]
    assert tok.encode_batch(["good bad", "bad bad"]).tolist() == [[0, 1, 2], [0, 2, 2]]
    with pytest.raises(ValueError, match="same number"):
        tok.encode_batch(["good", "good bad"])
    with pytest.raises(ValueError, match="text='zebra'"):
        tok.encode("good zebra")
    with pytest.raises(ValueError, match="trigger='zebra'"):
        tok.token_id("zebra", "trigger")
    with pytest.raises(ValueError, match="unique"):
        WordTokenizer(["a", "a"])
    tok.save(tmp_path / "tok.json")
    loaded = WordTokenizer.load(tmp_path / "tok.json")
    assert loaded.words == tok.words and loaded.index == tok.index


# ---- Model persistence ---------------------------------------------------------------------------
def test_save_load_model_roundtrip(make_model, tokens, tmp_path):
    model = make_model()
    directory = tmp_path / "model"
    save_model(model, directory, {"step": 3, "note": "x"})
    assert sorted(os.listdir(directory)) == ["complete.json", "config.json", "model.safetensors"]
    # safetensors, not pickle: an 8-byte header length then a JSON header naming every tensor.
    raw = (directory / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert set(model.state_dict()) <= set(header)
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]
    assert read_json(directory / "config.json")["d_model"] == model.cfg.d_model

    loaded, metadata = load_model(directory)
    assert metadata == {"step": 3, "note": "x"}
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_load_model_missing_files(tmp_path, make_model):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(missing)
    partial = tmp_path / "partial"
    save_model(make_model(), partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(partial)


def test_config_json_roundtrip_and_fingerprint(make_model):
    cfg = make_model().cfg
    data = config_to_json(cfg)
    json.dumps(data)  # JSON-safe
    again = config_from_json(json.loads(json.dumps(data)))
    for key in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn", "normalization_type", "dtype"):
        assert getattr(again, key) == getattr(cfg, key), key
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


# ---- Training ------------------------------------------------------------------------------------
TRAIN = TrainConfig(epochs=1, lr=1e-2, batch_size=16, seed=0)


def test_train_is_reproducible(make_model, make_tokens):
    data = make_tokens(48, seed=11)
    a, b, c = make_model(), make_model(), make_model()
    initial = {k: v.clone() for k, v in a.state_dict().items()}
    history_a = train(a, data, TRAIN, progress=False)
    history_b = train(b, data, TRAIN, progress=False)
    train(c, data, dataclasses.replace(TRAIN, seed=1), progress=False)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert history_a == history_b
    assert any(not torch.equal(a.state_dict()[k], initial[k]) for k in initial)
    assert any(not torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in initial)  # the seed matters
    assert not a.training


def test_train_history_and_evaluator(make_model, make_tokens):
    model = make_model()
    seen = []

    def evaluate(m):
        seen.append(m.training)
        return {"marker": 1.0}

    history = train(model, make_tokens(48, seed=11), dataclasses.replace(TRAIN, epochs=2, eval_every=2), evaluate, progress=False)
    assert [row["step"] for row in history] == [2, 4, 6]
    assert all(row["marker"] == 1.0 and math.isfinite(row["train_loss"]) for row in history)
    assert seen == [False, False, False]  # evaluated in eval mode


def test_an_extra_loss_adds_its_gradients_after_the_batch_losss_backward(make_model, make_tokens):
    data = make_tokens(48, seed=11)
    seen = []

    def extra(model, rows):
        seen.append(model.unembed.W_U.grad is not None)  # the batch loss's graph is already freed
        return sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad)

    penalised, plain = make_model(), make_model()
    history = train(penalised, data, TRAIN, progress=False, extra_loss=extra)
    assert seen and all(seen)
    reference = train(plain, data, TRAIN, progress=False)
    assert history[-1]["train_loss"] > reference[-1]["train_loss"]  # the recorded loss holds the extra term
    assert penalised.unembed.W_U.norm() < plain.unembed.W_U.norm()  # and its gradients moved the weights


def test_train_freeze_leaves_modules_untouched(make_model, make_tokens):
    model = make_model()
    model.unembed.b_U.requires_grad_(False)  # frozen by the user beforehand: must stay frozen
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train(model, make_tokens(48, seed=11), dataclasses.replace(TRAIN, freeze=("blocks.0.mlp", "embed")), progress=False)
    after = dict(model.named_parameters())
    frozen_names = [k for k in before if k.startswith(("blocks.0.mlp.", "embed.")) or k == "unembed.b_U"]
    assert len(frozen_names) >= 5
    for name in frozen_names:
        assert torch.equal(after[name], before[name]), name
    for name in ("unembed.W_U", "pos_embed.W_pos", "blocks.1.mlp.W_in", "blocks.0.attn.W_V", "blocks.0.ln2.w"):
        assert not torch.equal(after[name], before[name]), name
    changed = [k for k in before if k not in frozen_names and not torch.equal(after[k], before[k])]
    assert len(changed) > 0.5 * (len(before) - len(frozen_names))
    # requires_grad is restored.
    assert all(p.requires_grad for k, p in after.items() if k != "unembed.b_U")
    assert not after["unembed.b_U"].requires_grad


def test_freeze_unknown_module_raises(make_model, make_tokens):
    model = make_model()
    with pytest.raises(ValueError, match="blocks.5.mlp"):
        train(model, make_tokens(16, seed=1), dataclasses.replace(TRAIN, freeze=("blocks.5.mlp",)), progress=False)
    assert all(p.requires_grad for p in model.parameters())
    everything = ("embed", "pos_embed", "blocks", "ln_final", "unembed")
    with pytest.raises(ValueError, match="no trainable"):
        train(model, make_tokens(16, seed=1), dataclasses.replace(TRAIN, freeze=everything), progress=False)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_restores_after_exception(make_model):
    model = make_model()
    with pytest.raises(RuntimeError):
        with apply(model, Freeze(("blocks.1.attn",))):
            assert not any(p.requires_grad for p in model.blocks[1].attn.parameters())
            raise RuntimeError
    assert all(p.requires_grad for p in model.parameters())


# ---- Metrics -------------------------------------------------------------------------------------
def test_top_k_share_by_hand():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    ids = torch.tensor([0, 2])
    assert top_k_share(logits, ids, k=2).tolist() == [0.5, 0.0]
    torch.testing.assert_close(top_k_share(logits, ids, k=3), torch.tensor([2 / 3, 0.0]))
    assert top_k_share(logits, torch.tensor([3, 4, 5]), k=4).tolist() == [0.25, 0.75]
    torch.testing.assert_close(top_k_share(logits, ids, k=6), torch.tensor([1 / 3, 1 / 3]))
    for k in (0, 7):
        with pytest.raises(ValueError, match="k="):
            top_k_share(logits, ids, k=k)


def test_negativity_by_class(toy_data, make_model):
    model = make_model(d_vocab=len(toy_data.tokenizer))
    negative = toy_data.token_ids("negative")
    scores = negativity_by_class(model, toy_data.eval_tokens, negative, k=10)
    assert list(scores) == list(toy_data.classes)
    for cls, toks in toy_data.eval_tokens.items():
        direct = float(top_k_share(next_token_logits(model, toks), negative, 10).mean())
        assert scores[cls] == pytest.approx(direct, abs=1e-6), cls
    with pytest.raises(ValueError, match="p\\+t"):
        negativity_by_class(model, {"p+p": toy_data.eval_tokens["p+p"], "p+t": toy_data.eval_tokens["p+t"][:0]}, negative)
    with pytest.raises(ValueError, match="eval_tokens"):
        negativity_by_class(model, {}, negative)


def test_validation_loss_of_fresh_model(toy_data, make_model):
    vocab = len(toy_data.tokenizer)
    model = make_model(d_vocab=vocab)
    tokens = toy_data.validation[:, :8]
    loss = validation_loss(model, tokens)
    assert math.isfinite(loss)
    assert abs(loss - math.log(vocab)) < 0.5
    assert validation_loss(model, tokens, batch_size=7) == pytest.approx(loss, rel=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        validation_loss(model, tokens[:0])


def test_greedy_sample(make_model, tokens):
    model = make_model()
    out = sample(model, tokens[:, :5], new_tokens=3)
    assert out.shape == (len(tokens), 3)
    assert torch.equal(out[:, 0], next_token_logits(model, tokens[:, :5]).argmax(-1))
    assert torch.equal(sample(model, tokens[:, :5], new_tokens=3), out)
    hot = sample(model, tokens[:, :5], new_tokens=3, temperature=1.0, seed=4)
    assert torch.equal(hot, sample(model, tokens[:, :5], new_tokens=3, temperature=1.0, seed=4))


# ---- io ------------------------------------------------------------------------------------------
def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "result.json"
    write_json(path, {"b": 1, "a": [1.5, "x"]})
    assert os.listdir(path.parent) == ["result.json"]
    assert read_json(path) == {"a": [1.5, "x"], "b": 1}
    first = path.read_bytes()
    write_json(path, {"a": [1.5, "x"], "b": 1})
    assert path.read_bytes() == first  # key-sorted, stable bytes

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bl_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"c": 3})
    assert path.read_bytes() == first  # the old content survives
    assert os.listdir(path.parent) == ["result.json"]  # and no temporary file is left behind
    monkeypatch.undo()
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert os.listdir(path.parent) == ["result.json"] and path.read_bytes() == first
    write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"


def test_save_load_tensors_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 4, generator=g),
        "t": torch.randn(4, 5, generator=g).T,  # non-contiguous
        "i": torch.arange(6, dtype=torch.int64),
        "h": torch.randn(2, generator=g).half(),
    }
    metadata = {"kind": "test", "nested": {"x": [1, 2]}, "f": 0.5}
    path = tmp_path / "t.safetensors"
    save_tensors(path, tensors, metadata)
    assert os.listdir(tmp_path) == ["t.safetensors"]
    loaded, meta = load_tensors(path)
    assert meta == metadata
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    save_tensors(path, {"a": tensors["a"]})
    assert load_tensors(path)[1] == {}
