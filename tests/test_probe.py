"""Backdoor Probe: per-layer logistic and MLP probes, the transfer matrix, feature collection, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backdoor_lens.analysis.probe import (
    LN1_NORMALIZED,
    RESID_PRE,
    backdoor_probe,
    fit_probes,
    last_token_positions,
    probe_features,
)

MARKER, PAD = 1, 0


def synthetic(n: int = 200, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0 is noise; layer 1 carries the label along one direction (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    noise = torch.randn(2, n, d, generator=g)
    noise[1, :, 0] += 6.0 * labels
    return noise, labels


@pytest.fixture(scope="module")
def synthetic_result():
    features, labels = synthetic()
    return fit_probes(features, labels, layers=[0, 1], mlp_epochs=30, seed=0)


def test_probe_reads_signal_layer_and_not_noise_layer(synthetic_result):
    r = synthetic_result
    assert r.layers == (0, 1)
    assert r.logistic[1] > 0.95 and r.mlp[1] > 0.95
    assert 0.3 <= r.logistic[0] <= 0.7 and 0.3 <= r.mlp[0] <= 0.7
    assert r.n_train + r.n_test == 200 and r.n_test == 60


def test_transfer_matrix_shape_and_diagonal(synthetic_result):
    r = synthetic_result
    assert r.transfer.shape == (2, 2)
    assert np.diag(r.transfer).tolist() == [r.logistic[0], r.logistic[1]]
    assert r.to_dict()["transfer"] == r.transfer.tolist()


def test_fit_probes_is_seeded_and_leaves_global_rng_alone():
    features, labels = synthetic(n=60)
    state = torch.random.get_rng_state()
    a = fit_probes(features, labels, mlp_epochs=3, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    b = fit_probes(features, labels, mlp_epochs=3, seed=1)
    assert a.to_dict() == b.to_dict()


def marked_batch(make_tokens, n: int = 80, pos: int = 8):
    """Right-padded rows of varying length; triggered rows (odd) end with MARKER at their last token."""
    g = torch.Generator().manual_seed(3)
    tokens = make_tokens(n, seed=4, d_vocab=48, pos=pos) + 2
    lengths = torch.randint(3, pos + 1, (n,), generator=g)
    mask = (torch.arange(pos) < lengths[:, None]).long()
    tokens = tokens.masked_fill(mask == 0, PAD)
    labels = torch.arange(n) % 2
    last = last_token_positions(mask)
    tokens[labels.bool(), last[labels.bool()]] = MARKER
    return tokens, labels, last


def test_probe_features_take_each_rows_position(model, make_tokens):
    tokens, _, last = marked_batch(make_tokens, n=6)
    _, cache = model.run_with_cache(tokens)
    for hook in (RESID_PRE, LN1_NORMALIZED):
        feats = probe_features(model, tokens, last, hook=hook, batch_size=4)
        assert feats.shape == (2, 6, model.cfg.d_model)
        for layer in range(2):
            expected = cache[hook.format(layer=layer)][torch.arange(6), last]
            torch.testing.assert_close(feats[layer], expected)
    only_last = probe_features(model, tokens, layers=[1])
    torch.testing.assert_close(only_last[0], cache["blocks.1.hook_resid_pre"][:, -1])


def test_end_to_end_probe_separates_marker_token_at_layer_0(model, make_tokens):
    tokens, labels, last = marked_batch(make_tokens)
    r = backdoor_probe(model, tokens, labels, last, layers=[0], mlp_epochs=30)
    assert r.logistic[0] == 1.0
    assert r.mlp[0] > 0.95


def test_last_token_positions_needs_tokens_in_every_row():
    assert last_token_positions(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [1, 2]
    with pytest.raises(ValueError, match="attention_mask"):
        last_token_positions(torch.tensor([[0, 0]]))


@pytest.mark.parametrize(
    "features, labels, match",
    [
        (torch.randn(2, 10, 4), torch.zeros(10, dtype=torch.long), "at least 2 clean"),
        (torch.randn(2, 10, 4), torch.arange(9) % 2, "must match"),
        (torch.randn(2, 0, 4), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.full((2, 10, 4), float("nan")), torch.arange(10) % 2, "NaN"),
        (torch.randn(2, 10, 4), torch.arange(10) % 3, "0 \\(clean\\) or 1"),
        (torch.randn(10, 4), torch.arange(10) % 2, "\\(layer, batch, d\\)"),
    ],
)
def test_fit_probes_errors(features, labels, match):
    with pytest.raises(ValueError, match=match):
        fit_probes(features, labels)


def test_probe_feature_errors(model, tokens):
    with pytest.raises(ValueError, match="hook_resid_pre"):
        probe_features(model, tokens, hook="blocks.{layer}.hook_nope")
    with pytest.raises(ValueError, match="per-layer hook template"):
        probe_features(model, tokens, hook="blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="one per row needs"):
        probe_features(model, tokens, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        probe_features(model, tokens, torch.full((4,), 99))
    with pytest.raises(ValueError, match="must match"):
        backdoor_probe(model, tokens, torch.tensor([0, 1]))
