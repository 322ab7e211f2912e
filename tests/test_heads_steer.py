"""HeadAblate and Steer: algebraic identities, per-row positions, hook clean-up and argument checks."""

from __future__ import annotations

import pytest
import torch

from backdoor_lens.hooks import HeadAblate, MeanAblate, Steer, apply
from backdoor_lens.hooks.positions import PerRow
from backdoor_lens.lm.collect import collect_activations


def logits_of(model, tokens):
    with torch.no_grad():
        return model(tokens, return_type="logits")


def n_fwd_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())


def all_heads(model):
    return tuple((l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads))


@pytest.mark.parametrize("positions", [(2, 5), None])
def test_head_ablate_all_heads_leaves_only_b_O(model, tokens, positions):
    expected_interventions = [MeanAblate(f"blocks.{l}.attn", model.b_O[l].detach(), positions) for l in range(model.cfg.n_layers)]
    with apply(model, *expected_interventions):
        expected = logits_of(model, tokens)
    with apply(model, HeadAblate(all_heads(model), positions)):
        ablated = logits_of(model, tokens)
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=0)
    assert (ablated - logits_of(model, tokens)).abs().max() > 1e-3


def test_head_ablate_per_row_matches_row_by_row(model, tokens):
    ends = torch.tensor([1, 4, 7, 3])
    with apply(model, HeadAblate(((0, 1), (1, 0)), PerRow(ends))):
        batched = logits_of(model, tokens)
    for row, end in enumerate(ends.tolist()):
        with apply(model, HeadAblate(((0, 1), (1, 0)), end)):
            single = logits_of(model, tokens[row : row + 1])
        torch.testing.assert_close(batched[row : row + 1], single, atol=1e-5, rtol=0)


def test_head_ablate_mean_with_own_z_is_identity(model, tokens):
    single = tokens[:1]
    z = collect_activations(model, single, ["blocks.1.attn.hook_z"], position=3)["blocks.1.attn.hook_z"][0]
    means = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    means[1] = z
    with apply(model, HeadAblate(((1, 0), (1, 1)), 3, mode="mean", means=means)):
        patched = logits_of(model, single)
    torch.testing.assert_close(patched, logits_of(model, single), atol=1e-6, rtol=0)


def test_steer_zero_vector_changes_nothing(model, tokens):
    with apply(model, Steer(1, torch.zeros(model.cfg.d_model), PerRow(torch.tensor([0, 1, 2, 3])))):
        steered = logits_of(model, tokens)
    torch.testing.assert_close(steered, logits_of(model, tokens), atol=0, rtol=0)


@pytest.mark.parametrize("positions", [PerRow(torch.tensor([5, 0, 7, 2])), (1, 6), None])
def test_steer_adds_scaled_vector_at_positions_only(model, tokens, positions):
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    name = "blocks.1.hook_attn_out"
    base = collect_activations(model, tokens, [name])[name]
    with apply(model, Steer(1, v, positions, scale=-2.5)):
        steered = collect_activations(model, tokens, [name])[name]
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    if isinstance(positions, PerRow):
        mask[torch.arange(len(tokens)), positions.positions] = True
    else:
        mask[:, slice(None) if positions is None else list(positions)] = True
    diff = steered - base
    torch.testing.assert_close(diff[mask], (-2.5 * v).expand(int(mask.sum()), -1), atol=1e-6, rtol=0)
    assert not diff[~mask].any()


def test_hooks_are_removed_even_when_a_hook_raises(model, tokens):
    with apply(model, HeadAblate(((0, 0),), 1), Steer(0, torch.ones(model.cfg.d_model), 2)):
        assert n_fwd_hooks(model) == 2
    assert n_fwd_hooks(model) == 0
    with pytest.raises(ValueError, match="PerRow has 2 positions"):
        with apply(model, Steer(0, torch.ones(model.cfg.d_model), PerRow(torch.tensor([0, 1])))):
            logits_of(model, tokens)
    assert n_fwd_hooks(model) == 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: HeadAblate(((2, 0),)), "layer in \\[0, 2\\)"),
        (lambda m: HeadAblate(((0, 5),)), "head in \\[0, 2\\)"),
        (lambda m: HeadAblate(((0, 0),), mode="mean"), "means is required"),
        (lambda m: HeadAblate(((0, 0),), mode="mean", means=torch.zeros(2, 2, 3)), "means has shape"),
        (lambda m: Steer(2, torch.zeros(m.cfg.d_model)), "layer=2 is out of range"),
        (lambda m: Steer(0, torch.zeros(m.cfg.d_model + 1)), "d_model is 16"),
    ],
)
def test_bad_arguments_fail_at_hooks(model, make, match):
    with pytest.raises(ValueError, match=match):
        make(model).hooks(model)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="heads is empty"):
        HeadAblate(())
    with pytest.raises(ValueError, match="mode='max'"):
        HeadAblate(((0, 0),), mode="max")
    with pytest.raises(ValueError, match="vector contains NaN"):
        Steer(0, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="hook='mlp_in'"):
        Steer(0, torch.zeros(4), hook="mlp_in")
    with pytest.raises(ValueError, match="1-D integer tensor"):
        PerRow(torch.tensor([1.0, 2.0]))
