"""BAHA: target scoring, fast == reference parity, attribution against exact, backdoor vector, errors."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from backdoor_lens.analysis.baha import (
    backdoor_vector,
    baha_attribution,
    baha_fast,
    baha_reference,
    baha_scores,
    head_means,
    head_z_means,
)
from backdoor_lens.analysis.scoring import target_score
from backdoor_lens.hooks import Patch, apply
from backdoor_lens.lm.collect import collect_activations
from backdoor_lens.lm.rows import TargetBatch

D_VOCAB, N_CTX = 40, 16


def gpt2_model(dtype=torch.float32) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=D_VOCAB, n_ctx=N_CTX,
        act_fn="gelu_new", normalization_type="LN", seed=0, device="cpu", dtype=dtype,
    )
    return HookedTransformer(cfg).eval()


def llama_model() -> HookedTransformer:
    """Rotary positions, RMSNorm, grouped-query attention (2 KV heads for 4 query heads), gated MLP."""
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=48, d_vocab=D_VOCAB, n_ctx=N_CTX,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True,
        positional_embedding_type="rotary", rotary_dim=8, seed=1, device="cpu",
    )
    return HookedTransformer(cfg).eval()


def random_batch(n: int, seed: int) -> TargetBatch:
    """Prompts of 3-9 tokens and targets of 1-3 tokens, right-padded with id 0."""
    g = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        return torch.randint(0, D_VOCAB, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()

    return TargetBatch.from_ids([ids(3, 10) for _ in range(n)], [ids(1, 4) for _ in range(n)], pad_id=0)


# ---- scoring -------------------------------------------------------------------------------------
def test_target_score_is_geometric_mean_and_ignores_right_padding():
    model = gpt2_model()
    batch = TargetBatch.from_ids([[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]], [[9, 10], [11]], pad_id=3)
    assert batch.tokens.shape == (2, 9) and batch.prompt_end.tolist() == [2, 7] and batch.target_len.tolist() == [2, 1]
    with torch.no_grad():
        scores = target_score(model(batch.tokens), batch)
        alone = model(torch.tensor([[5, 6, 7, 9, 10]])).log_softmax(-1)[0]
    expected = ((alone[2, 9] + alone[3, 10]) / 2).exp()
    torch.testing.assert_close(scores[0], expected, atol=1e-6, rtol=0)


def test_target_batch_errors():
    model = gpt2_model()
    with pytest.raises(ValueError, match="prompts rows \\[1\\] are empty"):
        TargetBatch.from_ids([[1], []], [[2], [3]], pad_id=0)
    with pytest.raises(ValueError, match="targets rows \\[0\\] are empty"):
        TargetBatch.from_ids([[1]], [[]], pad_id=0)
    with pytest.raises(ValueError, match="one target per prompt"):
        TargetBatch.from_ids([[1]], [[2], [3]], pad_id=0)
    with pytest.raises(ValueError, match="n_ctx is 16"):
        TargetBatch.from_ids([list(range(15))], [[1, 2]], pad_id=0, model=model)
    with pytest.raises(ValueError, match="vocabulary"):
        TargetBatch.from_ids([[1, 2]], [[D_VOCAB]], pad_id=0, model=model)
    with pytest.raises(ValueError, match="prompts is empty"):
        TargetBatch.from_ids([], [], pad_id=0)


# ---- exact methods -------------------------------------------------------------------------------
@pytest.mark.parametrize("make_model", [gpt2_model, llama_model], ids=["gpt2", "llama_gqa_rotary"])
def test_fast_equals_reference(make_model):
    model = make_model()
    clean, triggered = random_batch(6, seed=1), random_batch(5, seed=2)
    mu = head_means(model, triggered)
    assert mu.shape == (3, 4, 32)
    reference = baha_reference(model, clean, mu)
    assert reference.shape == (3, 4) and reference.abs().max() > 1e-3  # non-trivial effects
    for batch_heads in (None, 3, 1):
        fast = baha_scores(model, clean, mu, method="fast", batch_heads=batch_heads)
        torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)


def test_head_means_is_mean_z_times_W_O():
    model = gpt2_model()
    batch = random_batch(4, seed=3)
    z = collect_activations(model, batch.tokens, ["blocks.2.attn.hook_z"])["blocks.2.attn.hook_z"]
    own_z = z[torch.arange(4), batch.prompt_end]  # [batch, heads, d_head]
    torch.testing.assert_close(head_z_means(model, batch)[2], own_z.mean(0))
    torch.testing.assert_close(head_means(model, batch)[2, 1], (own_z[:, 1] @ model.W_O[2, 1]).mean(0).detach())


@pytest.mark.parametrize("method", ["reference", "fast", "attribution"])
def test_cie_is_zero_when_mu_is_the_head_own_output(method):
    model = llama_model()
    clean = random_batch(1, seed=4)
    mu = head_means(model, random_batch(5, seed=5))
    mu[1, 2] = head_means(model, clean)[1, 2]  # head (1, 2) patched to its own clean output
    scores = baha_scores(model, clean, mu, method=method)
    assert scores[1, 2].abs() < 1e-7
    assert scores.abs().max() > 1e-4


# ---- attribution ---------------------------------------------------------------------------------
def _linearised_mu(model, clean, eps):
    """mu = h(x) + eps (mu_trig - h(x)) for a one-row clean batch: the exact CIE / eps -> the AtP estimate."""
    own = head_means(model, clean)
    return own + eps * (head_means(model, random_batch(6, seed=7)) - own)


def test_attribution_is_the_derivative_of_exact_patching():
    model = gpt2_model(torch.float64)
    eps = 1e-4
    for seed in (10, 11):
        clean = random_batch(1, seed=seed)
        mu = _linearised_mu(model, clean, eps)
        exact = baha_fast(model, clean, mu).double() / eps
        estimate = baha_attribution(model, clean, mu).double() / eps
        assert exact.abs().max() > 1e-4
        torch.testing.assert_close(estimate, exact, atol=1e-3 * exact.abs().max().item(), rtol=0)


def test_grad_drop_is_the_derivative_with_later_layers_frozen():
    """On 2 layers, GradDrop for layer-0 heads cuts the path through block 1: it equals the derivative
    of exact patching with block 1's outputs frozen at their clean values. Layer-1 heads keep AtP."""
    cfg = gpt2_model().cfg.to_dict() | {"n_layers": 2, "dtype": torch.float64}
    model = HookedTransformer(HookedTransformerConfig(**cfg)).eval()
    eps, clean = 1e-4, random_batch(1, seed=12)
    mu = _linearised_mu(model, clean, eps)
    frozen = ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    acts = collect_activations(model, clean.tokens, frozen)
    with apply(model, *(Patch(name, acts[name]) for name in frozen)):
        exact_direct = baha_reference(model, clean, mu).double() / eps
    dropped = baha_attribution(model, clean, mu, grad_drop=True).double() / eps
    plain = baha_attribution(model, clean, mu).double() / eps
    torch.testing.assert_close(dropped[0], exact_direct[0], atol=1e-3 * exact_direct[0].abs().max().item(), rtol=0)
    torch.testing.assert_close(dropped[1], plain[1])
    assert (dropped[0] - plain[0]).abs().max() > 1e-2 * plain[0].abs().max()


# ---- backdoor vector and errors ------------------------------------------------------------------
def test_backdoor_vector_sums_top_heads():
    mu = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    scores = torch.zeros(3, 4)
    scores[2, 1], scores[0, 3], scores[1, 0] = 3.0, 2.0, -5.0
    vector, heads = backdoor_vector(mu, scores, top_k=2)
    assert heads == ((2, 1), (0, 3))
    torch.testing.assert_close(vector, mu[2, 1] + mu[0, 3])
    with pytest.raises(ValueError, match="top_k=13 is out of range"):
        backdoor_vector(mu, scores, top_k=13)
    with pytest.raises(ValueError, match="must be \\[n_layers, n_heads, d_model\\]"):
        backdoor_vector(mu[:2], scores, top_k=1)


def test_baha_argument_errors():
    model = gpt2_model()
    clean = random_batch(2, seed=0)
    mu = torch.zeros(3, 4, 32)
    with pytest.raises(ValueError, match="method='exact' is not valid"):
        baha_scores(model, clean, mu, method="exact")
    with pytest.raises(ValueError, match="head_mu has shape \\(3, 4, 31\\)"):
        baha_scores(model, clean, mu[..., :31])
    with pytest.raises(ValueError, match="head_mu contains NaN"):
        baha_scores(model, clean, torch.full((3, 4, 32), float("nan")))
    with pytest.raises(ValueError, match="batch_heads=0 must be a positive int"):
        baha_scores(model, clean, mu, batch_heads=0)
    with pytest.raises(ValueError, match="grad_drop applies to method='attribution' only"):
        baha_scores(model, clean, mu, method="fast", grad_drop=True)
    long = TargetBatch.from_ids([list(range(1, 17))], [[1]], pad_id=0)
    with pytest.raises(ValueError, match="n_ctx\\) is 16"):
        baha_scores(model, long, mu)
