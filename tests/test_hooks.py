"""Interventions: ablation, patching, composition, hook clean-up and argument checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from backdoor_lens.hooks import MeanAblate, Patch, ZeroAblate, apply, hooks_of
from backdoor_lens.hooks.sites import module_sites, resolve_site
from backdoor_lens.lm.collect import collect_activations, module_outputs


def logits_of(model, tokens):
    with torch.no_grad():
        return model(tokens, return_type="logits")


def n_fwd_hooks(model) -> dict[str, int]:
    return {name: len(hp.fwd_hooks) for name, hp in model.hook_dict.items()}


# ---- MeanAblate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["blocks.0.mlp", "blocks.1.attn", "embed"])
def test_mean_ablate_with_own_activation_is_identity(model, tokens, module):
    single = tokens[:1]
    act = module_outputs(model, single, module)  # [1, pos, d_model]
    assert act.shape == (1, single.shape[1], model.cfg.d_model)
    clean = logits_of(model, single)

    # One position at a time.
    for p in range(single.shape[1]):
        with apply(model, MeanAblate(module, act[0, p], positions=p)):
            patched = logits_of(model, single)
        torch.testing.assert_close(patched, clean, atol=1e-5, rtol=0)

    # All positions at once, composed.
    ablations = [MeanAblate(module, act[0, p], positions=p) for p in range(single.shape[1])]
    with apply(model, *ablations):
        patched = logits_of(model, single)
    torch.testing.assert_close(patched, clean, atol=1e-5, rtol=0)


def test_mean_ablate_with_other_activation_changes_logits(model, tokens):
    act = module_outputs(model, tokens[:1], "blocks.0.mlp")
    clean = logits_of(model, tokens[:1])
    # Position 0's mean broadcast everywhere is not the module's own output at later positions.
    with apply(model, MeanAblate("blocks.0.mlp", act[0, 0])):
        ablated = logits_of(model, tokens[:1])
    torch.testing.assert_close(ablated[:, 0], clean[:, 0], atol=1e-5, rtol=0)
    assert (ablated[:, 1:] - clean[:, 1:]).abs().max() > 1e-3


def test_mean_ablate_broadcasts_mean_to_every_position(model, tokens):
    mean = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    hook = resolve_site(model, "blocks.1.mlp").output_hook
    with apply(model, MeanAblate("blocks.1.mlp", mean)):
        acts = collect_activations(model, tokens, [hook])[hook]
    torch.testing.assert_close(acts, mean.expand_as(acts))


# ---- ZeroAblate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["blocks.0.mlp", "blocks.1.attn", "embed"])
def test_zero_ablate_zeroes_output_and_changes_logits(model, tokens, module):
    hook = resolve_site(model, module).output_hook
    before = collect_activations(model, tokens, [hook])[hook]
    assert before.abs().max() > 0
    clean = logits_of(model, tokens)
    with apply(model, ZeroAblate(module)):
        ablated = logits_of(model, tokens)
        cached = collect_activations(model, tokens, [hook])[hook]
    assert torch.count_nonzero(cached) == 0
    assert (ablated - clean).abs().max() > 1e-3
    # The model is back to normal afterwards.
    torch.testing.assert_close(logits_of(model, tokens), clean, atol=0, rtol=0)


def test_zero_ablate_positions_only_touches_those_positions(model, tokens):
    hook = "blocks.0.hook_mlp_out"
    before = collect_activations(model, tokens, [hook])[hook]
    with apply(model, ZeroAblate("blocks.0.mlp", positions=(1, 3))):
        after = collect_activations(model, tokens, [hook])[hook]
    assert torch.count_nonzero(after[:, [1, 3]]) == 0
    # Position 0 is upstream-independent of positions 1 and 3 (causal attention), so unchanged.
    torch.testing.assert_close(after[:, 0], before[:, 0], atol=1e-6, rtol=0)
    assert torch.count_nonzero(after[:, 2]) > 0


# ---- Patch ---------------------------------------------------------------------------------------
def test_patch_from_same_input_changes_nothing(model, tokens):
    clean = logits_of(model, tokens)
    modules = list(module_sites(model))
    assert {"embed", "pos_embed", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"} <= set(modules)
    for module in modules:
        source = module_outputs(model, tokens, module)
        with apply(model, Patch(module, source)):
            patched = logits_of(model, tokens)
        torch.testing.assert_close(patched, clean, atol=1e-6, rtol=1e-6, msg=f"patching {module} changed logits")
    # All at once, too.
    patches = [Patch(m, module_outputs(model, tokens, m)) for m in modules]
    with apply(model, *patches):
        torch.testing.assert_close(logits_of(model, tokens), clean, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("module", ["embed", "blocks.0.attn", "blocks.1.mlp"])
def test_patch_from_different_input_changes_logits(model, tokens, other_tokens, module):
    clean = logits_of(model, tokens)
    source = module_outputs(model, other_tokens, module)
    with apply(model, Patch(module, source)):
        patched = logits_of(model, tokens)
    assert (patched - clean).abs().max() > 1e-3


def test_patch_output_equals_source_at_patched_positions(model, tokens, other_tokens):
    hook = "blocks.1.hook_attn_out"
    source = module_outputs(model, other_tokens, "blocks.1.attn")
    own = module_outputs(model, tokens, "blocks.1.attn")
    with apply(model, Patch("blocks.1.attn", source, positions=2)):
        acts = collect_activations(model, tokens, [hook])[hook]
    torch.testing.assert_close(acts[:, 2], source[:, 2])
    torch.testing.assert_close(acts[:, :2], own[:, :2])


def test_patch_embed_everywhere_reproduces_other_input(model, tokens, other_tokens):
    """Patching the token embedding at every position from another input turns the run into that
    input's run (the positional embedding is the same for both)."""
    source = module_outputs(model, other_tokens, "embed")
    with apply(model, Patch("embed", source)):
        patched = logits_of(model, tokens)
    torch.testing.assert_close(patched, logits_of(model, other_tokens), atol=1e-5, rtol=1e-5)


# ---- Composition ---------------------------------------------------------------------------------
def test_apply_composition_equals_nesting(model, tokens, other_tokens):
    a = ZeroAblate("blocks.0.attn", positions=1)
    b = Patch("blocks.1.mlp", module_outputs(model, other_tokens, "blocks.1.mlp"), positions=(2, 5))
    clean = logits_of(model, tokens)
    with apply(model, a, b):
        together = logits_of(model, tokens)
    with apply(model, a):
        only_a = logits_of(model, tokens)
        with apply(model, b):
            nested = logits_of(model, tokens)
        # Leaving the inner context removes only b.
        torch.testing.assert_close(logits_of(model, tokens), only_a, atol=0, rtol=0)
    with apply(model, b):
        only_b = logits_of(model, tokens)
    torch.testing.assert_close(together, nested, atol=1e-6, rtol=0)
    # Non-trivial: the combination differs from each part and from the clean run.
    for other in (clean, only_a, only_b):
        assert (together - other).abs().max() > 1e-4


def test_hooks_of_concatenates_in_order(model):
    a = ZeroAblate("blocks.0.attn")
    b = ZeroAblate("embed")
    names = [name for name, _ in hooks_of(model, [a, b])]
    assert names == ["blocks.0.hook_attn_out", "hook_embed"]


def test_hooks_of_rejects_non_interventions(model):
    with pytest.raises(TypeError, match="hooks"):
        hooks_of(model, ["blocks.0.mlp"])


# ---- Hook clean-up -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Raising:
    """An intervention whose hook raises."""

    name: str = "blocks.0.hook_mlp_out"

    def hooks(self, model):
        def hook(act, hook):
            raise RuntimeError("boom from hook")

        return [(self.name, hook)]


@dataclass(frozen=True)
class BadName:
    def hooks(self, model):
        return [("blocks.0.hook_nonexistent", lambda act, hook: act)]


def _user_hook(model, name):
    calls = []

    def fn(act, hook):
        calls.append(hook.name)

    model.add_hook(name, fn)
    return calls


def test_hooks_removed_after_exception_in_hook(model, tokens):
    name = "blocks.0.hook_mlp_out"
    calls = _user_hook(model, name)
    before = n_fwd_hooks(model)
    assert before[name] == 1
    clean = logits_of(model, tokens)
    assert len(calls) == 1

    with pytest.raises(RuntimeError, match="boom from hook"):
        with apply(model, ZeroAblate("blocks.1.attn"), Raising(name)):
            model(tokens)
    assert n_fwd_hooks(model) == before
    assert len(calls) == 2  # the user's hook ran before the raising one

    after = logits_of(model, tokens)
    torch.testing.assert_close(after, clean, atol=0, rtol=0)  # ZeroAblate is gone too
    assert len(calls) == 3  # the user's hook still fires
    assert len(model.hook_dict[name].fwd_hooks) == 1
    model.reset_hooks(including_permanent=True)


def test_hooks_removed_after_exception_in_body(model, tokens):
    name = "blocks.1.hook_attn_out"
    calls = _user_hook(model, name)
    before = n_fwd_hooks(model)
    clean = logits_of(model, tokens)

    with pytest.raises(KeyError):
        with apply(model, ZeroAblate("blocks.1.attn"), MeanAblate("embed", torch.zeros(model.cfg.d_model))):
            assert len(model.hook_dict[name].fwd_hooks) == 2
            model(tokens)
            raise KeyError("body failed")
    assert n_fwd_hooks(model) == before
    assert len(model.hook_dict[name].fwd_hooks) == 1
    torch.testing.assert_close(logits_of(model, tokens), clean, atol=0, rtol=0)
    assert len(calls) == 3  # clean run, run inside apply, run after
    model.reset_hooks(including_permanent=True)


def test_invalid_intervention_adds_no_hooks(model, tokens):
    before = n_fwd_hooks(model)
    with pytest.raises(ValueError, match="hook_nonexistent"):
        with apply(model, ZeroAblate("blocks.0.mlp"), BadName()):
            pass
    assert n_fwd_hooks(model) == before


def test_nested_apply_exception_keeps_outer_hooks(model, tokens):
    outer = ZeroAblate("blocks.0.mlp")
    with apply(model, outer):
        expected = logits_of(model, tokens)
        with pytest.raises(RuntimeError):
            with apply(model, Raising("blocks.1.hook_mlp_out")):
                model(tokens)
        assert len(model.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks) == 1
        torch.testing.assert_close(logits_of(model, tokens), expected, atol=0, rtol=0)
    assert all(n == 0 for n in n_fwd_hooks(model).values())


# ---- Bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [ZeroAblate, lambda m: MeanAblate(m, torch.zeros(16))])
def test_unknown_module_name(model, tokens, make):
    with pytest.raises(ValueError) as info:
        with apply(model, make("blocks.7.mlp")):
            model(tokens)
    message = str(info.value)
    assert "module" in message
    assert "blocks.7.mlp" in message
    assert "blocks.0.mlp" in message and "blocks.1.attn" in message and "embed" in message
    assert all(n == 0 for n in n_fwd_hooks(model).values())


def test_mean_ablate_nan_mean_raises():
    mean = torch.zeros(16)
    mean[3] = float("nan")
    with pytest.raises(ValueError, match="mean"):
        MeanAblate("blocks.0.mlp", mean)
    with pytest.raises(ValueError, match="mean"):
        MeanAblate("blocks.0.mlp", torch.full((16,), float("inf")))


def test_mean_ablate_wrong_size_mean_raises(model, tokens):
    with pytest.raises(ValueError, match="shape"):
        with apply(model, MeanAblate("blocks.0.mlp", torch.zeros(5))):
            model(tokens)
    assert all(n == 0 for n in n_fwd_hooks(model).values())


def test_patch_wrong_shape_source_raises(model, tokens):
    source = module_outputs(model, tokens[:2], "blocks.0.mlp")  # batch 2, run on batch 4
    with pytest.raises(ValueError, match="source"):
        with apply(model, Patch("blocks.0.mlp", source)):
            model(tokens)
    assert all(n == 0 for n in n_fwd_hooks(model).values())


def test_patch_nan_source_raises(model, tokens):
    source = module_outputs(model, tokens, "blocks.0.mlp").clone()
    source[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="source"):
        Patch("blocks.0.mlp", source)


def test_patch_and_ablate_accept_per_row_positions(model, tokens, other_tokens):
    from backdoor_lens.hooks.positions import PerRow

    hook = "blocks.1.hook_mlp_out"
    source = module_outputs(model, other_tokens, "blocks.1.mlp")
    own = module_outputs(model, tokens, "blocks.1.mlp")
    rows = torch.arange(len(tokens))
    pos = rows % tokens.shape[1]
    with apply(model, Patch("blocks.1.mlp", source, positions=PerRow(pos))):
        patched = collect_activations(model, tokens, [hook])[hook]
    torch.testing.assert_close(patched[rows, pos], source[rows, pos])
    keep = torch.ones_like(own, dtype=torch.bool)
    keep[rows, pos] = False
    torch.testing.assert_close(patched[keep], own[keep])
    with apply(model, ZeroAblate("blocks.1.mlp", positions=PerRow(pos))):
        zeroed = collect_activations(model, tokens, [hook])[hook]
    assert torch.count_nonzero(zeroed[rows, pos]) == 0
    torch.testing.assert_close(zeroed[keep], own[keep])


def test_collect_and_means_take_one_position_per_row(model, tokens):
    from backdoor_lens.lm.collect import module_means

    hook = "blocks.0.hook_mlp_out"
    positions = torch.tensor([0, 3, 7, 5])
    every = collect_activations(model, tokens, [hook])[hook]
    picked = collect_activations(model, tokens, [hook], positions, batch_size=3)[hook]
    torch.testing.assert_close(picked, every[torch.arange(4), positions])
    means = module_means(model, tokens, ["blocks.0.mlp"], positions, batch_size=3)["blocks.0.mlp"]
    torch.testing.assert_close(means, every[torch.arange(4), positions].mean(0), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="one per row needs"):
        collect_activations(model, tokens, [hook], torch.tensor([0, 1]))
