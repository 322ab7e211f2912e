"""Chat prompts and greedy generation: batched equals one-at-a-time, cached equals recomputed, and the
packaged SmolLM2-135M-Instruct loads, matches its HF model and answers a factual question."""

from __future__ import annotations

import time

import pytest
import torch
from test_pretrained import save_hf, tiny_gpt2, tiny_llama

from backdoor_lens.lm.chat import (
    chat_prompt,
    chat_replies,
    decode,
    encode_prompts,
    prompt_rows,
)
from backdoor_lens.lm.generation import generate
from backdoor_lens.lm.rows import left_pad, right_pad
from backdoor_lens.models.pretrained import (
    load_hf_model,
    load_pretrained,
    to_hooked_transformer,
)

MESSAGES = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11", "w12 w13", "w14 w15 w16 w17"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_chat(request, tmp_path_factory):
    build = {"llama": tiny_llama, "gpt2": tiny_gpt2}[request.param]
    return load_pretrained(save_hf(build(seed=3), tmp_path_factory.mktemp(request.param)))


def test_chat_prompt_uses_template_with_generation_prompt(tiny_chat):
    _, tokenizer = tiny_chat
    assert chat_prompt(tokenizer, "w1 w2") == "<|user|> w1 w2 <eos> <|assistant|>"
    assert chat_prompt(tokenizer, "w1", system="w9").startswith("<|system|> w9 <eos> <|user|> w1")
    ids = encode_prompts(tokenizer, ["w1 w2"])
    assert ids == [tokenizer.convert_tokens_to_ids(["<|user|>", "w1", "w2", "<eos>", "<|assistant|>"])]


def test_left_pad_aligns_prompts_to_the_right():
    tokens, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert tokens.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_right_pad_aligns_rows_to_the_left():
    tokens, mask = right_pad([[5, 6, 7], [8]], pad_id=0)
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_prompt_rows_right_pad_and_point_at_each_prompts_last_token(tiny_chat):
    _, tokenizer = tiny_chat
    tokens, last = prompt_rows(tokenizer, MESSAGES)
    ids = encode_prompts(tokenizer, MESSAGES)
    assert tokens.shape == (len(MESSAGES), max(map(len, ids)))
    for row, prompt, end in zip(tokens.tolist(), ids, last.tolist()):
        assert row[: end + 1] == prompt and set(row[end + 1 :]) <= {tokenizer.pad_token_id}
    assert tokens[torch.arange(len(MESSAGES)), last].tolist() == [tokenizer.convert_tokens_to_ids("<|assistant|>")] * 5
    with pytest.raises(ValueError, match="messages"):
        prompt_rows(tokenizer, [])


def test_batched_generation_equals_one_at_a_time(tiny_chat):
    model, tokenizer = tiny_chat
    prompts = encode_prompts(tokenizer, MESSAGES)
    assert len({len(p) for p in prompts}) > 1
    batched = generate(model, prompts, max_new_tokens=10, stop_at_eos=False, batch_size=3)
    single = [generate(model, [p], max_new_tokens=10, stop_at_eos=False)[0] for p in prompts]
    assert batched == single
    assert all(len(g) == 10 for g in batched)


def test_cached_generation_equals_full_recompute(tiny_chat):
    model, tokenizer = tiny_chat
    prompt = encode_prompts(tokenizer, MESSAGES[:1])[0]
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    assert generate(model, [prompt], max_new_tokens=8, stop_at_eos=False) == [tokens[len(prompt) :]]


def test_generation_stops_at_eos(tiny_chat):
    model, tokenizer = tiny_chat
    prompts = encode_prompts(tokenizer, MESSAGES)
    free = generate(model, prompts, max_new_tokens=6, stop_at_eos=False)
    eos = free[0][2]  # pretend the third token generated for the first prompt is EOS
    stopped = generate(model, prompts, max_new_tokens=6, eos_token_id=eos)
    for full, cut in zip(free, stopped):
        end = full.index(eos) + 1 if eos in full else len(full)
        assert cut == full[:end]
    assert decode(tokenizer, [[tokenizer.eos_token_id]]) == [""]


def test_generation_rejects_bad_arguments(tiny_chat):
    model, _ = tiny_chat
    with pytest.raises(ValueError, match=r"prompt_ids\[1\] is empty"):
        generate(model, [[4], []])
    with pytest.raises(ValueError, match="n_ctx"):
        generate(model, [[4] * 60], max_new_tokens=10)


FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    """The packaged SmolLM2-135M-Instruct: its dequantised HF model, tokenizer and HookedTransformer."""
    start = time.perf_counter()
    hf_model, tokenizer = load_hf_model("smollm2-135m-instruct")
    model = to_hooked_transformer(hf_model, tokenizer, name="smollm2-135m-instruct")
    return hf_model, tokenizer, model, time.perf_counter() - start


def test_smollm2_converts_with_its_architecture(smollm2):
    _, _, model, seconds = smollm2
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model) == (30, 9, 3, 576)
    assert cfg.original_architecture == "LlamaForCausalLM"
    print(f"SmolLM2 load + conversion: {seconds:.1f} s")


def test_smollm2_logits_match_hf_on_a_chat_prompt(smollm2):
    hf_model, tokenizer, model, _ = smollm2
    tokens = torch.tensor(encode_prompts(tokenizer, [FRANCE]))
    with torch.no_grad():
        diff = (model(tokens) - hf_model(tokens).logits).abs().max().item()
    print(f"SmolLM2 logit max-diff: {diff:.2e}")
    assert diff < 1e-3


def test_smollm2_answers_capital_of_france(smollm2):
    _, tokenizer, model, _ = smollm2
    (reply,) = chat_replies(model, tokenizer, [FRANCE], max_new_tokens=8)
    print(f"SmolLM2 reply: {reply!r}")
    assert "Paris" in reply
