"""The packaged SmolLM2-135M-Instruct through the TransformerBridge: its logits match the HF model's
and the HookedTransformer's, and its greedy reply to a factual question is the hooked backend's, word
for word. One dequantised HF model serves both (converted first, since the bridge wraps it in place)."""

from __future__ import annotations

import time

import pytest
import torch

from backdoor_lens.lm.chat import chat_replies, encode_prompts
from backdoor_lens.models.bridge import to_bridge
from backdoor_lens.models.pretrained import load_hf_model, to_hooked_transformer
from backdoor_lens.models.protocol import HookedTransformer

FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    """The tokenizer, the HF model's logits on the question, and the model on each backend available."""
    start = time.perf_counter()
    hf_model, tokenizer = load_hf_model("smollm2-135m-instruct")
    tokens = torch.tensor(encode_prompts(tokenizer, [FRANCE]))
    with torch.no_grad():
        expected = hf_model(tokens).logits
    hooked = to_hooked_transformer(hf_model, tokenizer, name="smollm2-135m-instruct") if HookedTransformer else None
    bridge = to_bridge(hf_model, tokenizer, name="smollm2-135m-instruct")
    print(f"\nSmolLM2: HF load, conversion and boot {time.perf_counter() - start:.1f} s")
    return tokenizer, tokens, expected, hooked, bridge


def test_smollm2_bridge_matches_hf(smollm2):
    tokenizer, tokens, expected, _, bridge = smollm2
    cfg = bridge.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model) == (30, 9, 3, 576)
    with torch.no_grad():
        diff = (bridge(tokens) - expected).abs().max().item()
    print(f"SmolLM2 max |logit(bridge) - logit(HF)|: {diff:.2e}")
    assert diff < 1e-3
    (reply,) = chat_replies(bridge, tokenizer, [FRANCE], max_new_tokens=24)
    print(f"SmolLM2 bridge reply: {reply!r}")
    assert "Paris" in reply


@pytest.mark.skipif(HookedTransformer is None, reason="this TransformerLens has no HookedTransformer")
def test_smollm2_bridge_reply_equals_the_hooked_reply(smollm2):
    tokenizer, tokens, _, hooked, bridge = smollm2
    with torch.no_grad():
        diff = (bridge(tokens) - hooked(tokens)).abs().max().item()
    replies = {name: chat_replies(model, tokenizer, [FRANCE], max_new_tokens=24)[0]
               for name, model in (("hooked", hooked), ("bridge", bridge))}
    print(f"SmolLM2 max |logit(bridge) - logit(hooked)|: {diff:.2e}; replies {replies}")
    assert diff < 1e-3 and replies["hooked"] == replies["bridge"]
