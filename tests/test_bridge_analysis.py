"""Analyses on the TransformerBridge backend, without HookedTransformer: BAHA (exact through the key/value
cache against the one-pass-per-head reference, attribution against the derivative of exact patching),
probes, the logit lens with and without folded weights, the backdoor vector, and Backdoor Collapse."""

from __future__ import annotations

import random

import pytest
import torch
from test_bridge import saved
from test_pretrained import TOKENS, VOCAB
from transformers import LlamaConfig, LlamaForCausalLM

from backdoor_lens.analysis.baha import backdoor_vector, baha_scores, head_means
from backdoor_lens.analysis.lens import logit_lens, unembed
from backdoor_lens.analysis.probe import backdoor_probe
from backdoor_lens.analysis.scoring import target_score
from backdoor_lens.hooks import Steer, apply
from backdoor_lens.lm.chat import encode_prompts
from backdoor_lens.lm.logits import final_residual
from backdoor_lens.lm.rows import TargetBatch
from backdoor_lens.lm.training import TrainConfig
from backdoor_lens.models.bridge import to_bridge
from backdoor_lens.models.pretrained import load_packaged_tokenizer, load_pretrained


def random_batch(n: int, seed: int) -> TargetBatch:
    """Prompts of 3-9 word tokens and targets of 1-3, right-padded with the pad id (1)."""
    g = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        return torch.randint(7, len(VOCAB), (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()

    return TargetBatch.from_ids([ids(3, 10) for _ in range(n)], [ids(1, 4) for _ in range(n)], pad_id=1)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def bridge(request, tmp_path_factory):
    return load_pretrained(saved(request.param, tmp_path_factory.mktemp(request.param)), backend="bridge")[0]


# ---- BAHA ----------------------------------------------------------------------------------------
def test_fast_equals_reference_on_the_bridge(bridge):
    clean, triggered = random_batch(5, seed=1), random_batch(4, seed=2)
    mu = head_means(bridge, triggered)
    reference = baha_scores(bridge, clean, mu, method="reference")
    assert reference.shape == (2, 4) and reference.abs().max() > 0
    for batch_heads in (None, 3, 1):
        fast = baha_scores(bridge, clean, mu, method="fast", batch_heads=batch_heads)
        torch.testing.assert_close(fast, reference, atol=1e-3 * reference.abs().max().item(), rtol=0)


def test_cie_is_zero_when_mu_is_the_head_own_output(bridge):
    clean = random_batch(1, seed=4)
    mu = head_means(bridge, random_batch(5, seed=5))
    mu[1, 2] = head_means(bridge, clean)[1, 2]
    for method in ("reference", "fast", "attribution"):
        scores = baha_scores(bridge, clean, mu, method=method)
        assert scores[1, 2].abs() < 1e-3 * scores.abs().max(), method


def test_attribution_is_the_derivative_of_exact_patching(tmp_path):
    bridge, _ = load_pretrained(saved("gpt2", tmp_path), backend="bridge", dtype=torch.float64)
    eps, clean = 1e-4, random_batch(1, seed=10)
    own = head_means(bridge, clean)
    mu = own + eps * (head_means(bridge, random_batch(6, seed=7)) - own)
    exact = baha_scores(bridge, clean, mu, method="fast").double() / eps
    estimate = baha_scores(bridge, clean, mu, method="attribution").double() / eps
    torch.testing.assert_close(estimate, exact, atol=2e-3 * exact.abs().max().item(), rtol=0)
    dropped = baha_scores(bridge, clean, mu, method="attribution", grad_drop=True).double() / eps
    torch.testing.assert_close(dropped[1], estimate[1])  # the last layer keeps plain AtP


def test_backdoor_vector_steers_the_bridge(bridge):
    mu = head_means(bridge, random_batch(4, seed=2))
    scores = baha_scores(bridge, random_batch(3, seed=1), mu, method="attribution")
    vector, heads = backdoor_vector(mu, scores, top_k=2)
    assert len(heads) == 2 and vector.shape == (bridge.cfg.d_model,)
    with torch.no_grad():
        before = bridge(TOKENS)
        with apply(bridge, Steer(1, vector, positions=-1, scale=-1.0)):
            after = bridge(TOKENS)
    assert (after[:, -1] - before[:, -1]).abs().max() > 0 and torch.equal(after[:, :-1], before[:, :-1])


# ---- probes and the logit lens -------------------------------------------------------------------
def test_probe_on_the_bridge_reads_a_marker_token(bridge):
    tokens = torch.randint(10, len(VOCAB), (40, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 2
    tokens[labels == 1, 3] = 7  # the "trigger"
    result = backdoor_probe(bridge, tokens, labels, positions=3, layers=[0, 1], mlp_epochs=30)
    assert result.logistic[0] == 1.0 and result.mlp[0] > 0.9


def test_logit_lens_needs_no_folded_weights(tmp_path):
    directory = saved("llama", tmp_path)
    plain, _ = load_pretrained(directory, backend="bridge")
    folded, _ = load_pretrained(directory, backend="bridge", compatibility=True)
    with torch.no_grad():
        resid = final_residual(plain, TOKENS)[:, -1]
        torch.testing.assert_close(unembed(plain, resid), plain(TOKENS)[:, -1], atol=1e-5, rtol=0)
    classes = {"low": torch.arange(7, 40), "high": torch.arange(40, 100)}
    shares = logit_lens(plain, TOKENS, classes, k=10)
    assert shares == logit_lens(folded, TOKENS, classes, k=10)
    assert set(shares) == {f"blocks.{l}.attn.head{h}" for l in range(2) for h in range(4)} | {
        "blocks.0.mlp", "blocks.1.mlp", "full model"}


# ---- Backdoor Collapse ---------------------------------------------------------------------------
def test_backdoor_collapse_on_a_bridge():
    from backdoor_lens.defense.backdoor_collapse import CollapseConfig, inject_known, recover, with_known_trigger

    tokenizer = load_packaged_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = to_bridge(LlamaForCausalLM(config), tokenizer, name="tiny-chat")
    fast = TrainConfig(epochs=12, lr=1e-2, batch_size=12, freeze=("embed",))
    collapse = CollapseConfig(inject=fast, recover=fast, known_share=0.5, aggregation_weight=0.1, aggregation_layer=1)
    prompts, answers = [f"Tell me about topic number {i}" for i in range(16)], ["Sure, here it is."] * 16
    held_out = with_known_trigger([f"Explain idea number {i}" for i in range(6)], collapse, random.Random(5))

    def probability(target: str) -> float:
        ids = encode_prompts(tokenizer, held_out)
        batch = TargetBatch.from_ids(ids, [tokenizer(target, add_special_tokens=False).input_ids] * len(ids),
                                     tokenizer.pad_token_id)
        with torch.no_grad():
            return float(target_score(model(batch.tokens), batch).mean())

    before = probability(collapse.target)
    embed = model.embed.W_E.detach().clone()
    inject_known(model, tokenizer, prompts, answers, collapse, progress=False)
    planted = probability(collapse.target)
    recover(model, tokenizer, prompts, answers, collapse, progress=False)
    recovered = probability(collapse.target)
    print(f"Collapse on a bridge: P(defender target) {before:.2g} -> planted {planted:.2g} -> recovered {recovered:.2g}")
    assert planted > 10 * before and recovered < planted / 2
    assert torch.equal(model.embed.W_E, embed)  # frozen by name on the bridge
