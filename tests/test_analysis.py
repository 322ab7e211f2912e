"""Analyses: activation patching, the per-component logit lens, Optuna tuning, activation collection."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest
import torch

from backdoor_lens.analysis.lens import component_outputs, logit_lens, unembed
from backdoor_lens.analysis.patching import negativity_patching, patching_effects
from backdoor_lens.analysis.tune import (
    TuneConfig,
    match_objective,
    target_objective,
    tune_scales,
)
from backdoor_lens.eval.negativity import top_k_share
from backdoor_lens.hooks.sites import module_names, module_sites
from backdoor_lens.lm.collect import (
    collect_activations,
    load_means,
    module_io,
    module_means,
    save_means,
)

NEG = torch.arange(0, 10)
POS = torch.arange(10, 20)


def logits_of(model, tokens):
    with torch.no_grad():
        return model(tokens, return_type="logits")


def last_logit_metric(logits: torch.Tensor) -> float:
    """A continuous metric (so that any change in the logits shows)."""
    return float(logits[:, -1, 3].mean() - logits[:, -1, 7].mean())


# ---- Patching ------------------------------------------------------------------------------------
def test_patching_from_same_input_has_zero_effect(model, tokens):
    modules = list(module_sites(model))
    out = patching_effects(model, tokens, tokens, modules, last_logit_metric)
    assert list(out) == modules
    base = last_logit_metric(logits_of(model, tokens))
    for module, row in out.items():
        assert row["effect"] == pytest.approx(0.0, abs=1e-6), module
        assert row["patched"] == pytest.approx(base, abs=1e-6), module


def test_patching_from_other_input_has_effects(model, tokens, other_tokens):
    modules = ["embed", *module_names(model)]
    out = patching_effects(model, tokens, other_tokens, modules, last_logit_metric)
    base = last_logit_metric(logits_of(model, tokens))
    clean = last_logit_metric(logits_of(model, other_tokens))
    for module, row in out.items():
        assert row["effect"] == pytest.approx(row["patched"] - base, abs=1e-9)
    # The token embedding carries everything that differs: patching it gives the clean run.
    assert out["embed"]["patched"] == pytest.approx(clean, abs=1e-5)
    assert abs(out["embed"]["effect"]) > 1e-3
    # The last layer's MLP output at the last position feeds the logits directly.
    assert abs(out["blocks.1.mlp"]["effect"]) > 1e-4


def test_patching_shape_mismatch_raises(model, tokens):
    with pytest.raises(ValueError, match="same shape"):
        patching_effects(model, tokens, tokens[:2], ["blocks.0.mlp"], last_logit_metric)


def test_negativity_patching_returns_every_module(model, tokens, other_tokens):
    modules = module_names(model)
    out = negativity_patching(model, tokens, other_tokens, modules, NEG, k=5)
    assert set(out) == set(modules)
    base = float(top_k_share(logits_of(model, tokens)[:, -1], NEG, 5).mean())
    for module in modules:
        assert set(out[module]) == {"patched", "effect", "per_row"}
        assert sum(out[module]["per_row"]) / len(out[module]["per_row"]) == pytest.approx(out[module]["patched"])
        assert 0.0 <= out[module]["patched"] <= 1.0
        assert out[module]["effect"] == pytest.approx(out[module]["patched"] - base, abs=1e-9)
    same = negativity_patching(model, tokens, tokens, modules, NEG, k=5)
    assert all(row["effect"] == 0.0 for row in same.values())


# ---- Logit lens ----------------------------------------------------------------------------------
def test_logit_lens_full_model_matches_model_logits(model, tokens):
    class_ids = {"negative": NEG, "positive": POS}
    lens = logit_lens(model, tokens, class_ids, position=-1, k=10)
    final = logits_of(model, tokens)[:, -1]
    for cls, ids in class_ids.items():
        assert lens["full model"][cls] == pytest.approx(float(top_k_share(final, ids, 10).mean()), abs=1e-9)
    expected = {f"blocks.{l}.attn.head{h}" for l in range(2) for h in range(2)} | {"blocks.0.mlp", "blocks.1.mlp", "full model"}
    assert set(lens) == expected
    assert all(0.0 <= v <= 1.0 for row in lens.values() for v in row.values())
    # Shares of disjoint classes within the top k add up to at most 1.
    assert all(row["negative"] + row["positive"] <= 1.0 + 1e-9 for row in lens.values())


def test_unembed_of_final_residual_is_the_logits(model, tokens):
    resid = collect_activations(model, tokens, ["blocks.1.hook_resid_post"], position=-1)["blocks.1.hook_resid_post"]
    with torch.no_grad():
        torch.testing.assert_close(unembed(model, resid), logits_of(model, tokens)[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", [-1, 0, 3])
def test_component_outputs_are_consistent(model, tokens, position):
    comps = component_outputs(model, tokens, position)
    hooks = ["hook_embed", "hook_pos_embed"] + [f"blocks.{l}.{n}" for l in range(2) for n in ("hook_attn_out", "hook_mlp_out")]
    acts = collect_activations(model, tokens, hooks, position)
    total = acts["hook_embed"] + acts["hook_pos_embed"]
    for layer in range(model.cfg.n_layers):
        heads = [comps[f"blocks.{layer}.attn.head{h}"] for h in range(model.cfg.n_heads)]
        assert all(h.shape == (len(tokens), model.cfg.d_model) for h in heads)
        attn = torch.stack(heads).sum(0) + model.b_O[layer].detach()
        torch.testing.assert_close(attn, acts[f"blocks.{layer}.hook_attn_out"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(comps[f"blocks.{layer}.mlp"], acts[f"blocks.{layer}.hook_mlp_out"])
        total = total + attn + comps[f"blocks.{layer}.mlp"]
    # The residual stream is the sum of all components.
    torch.testing.assert_close(comps["full model"], total, atol=1e-5, rtol=1e-5)


# ---- Tuning --------------------------------------------------------------------------------------
def quadratic(scales: torch.Tensor) -> float:
    return float((scales[0] - 1.3) ** 2)


def n_complete(storage: str, study_name: str) -> int:
    study = optuna.load_study(study_name=study_name, storage=storage)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


WORKER = textwrap.dedent(
    """
    import sys, torch
    from backdoor_lens.analysis.tune import TuneConfig, tune_scales
    storage, n_trials = sys.argv[1], int(sys.argv[2])
    result = tune_scales(lambda s: float((s[0] - 1.3) ** 2), torch.tensor([1.0]),
                         TuneConfig(n_trials=n_trials, factor_range=(0.05, 2.0), seed=1),
                         storage=storage, study_name="quad", progress=False)
    print("N_TRIALS", result.n_trials)
    """
)


def test_tune_scales_finds_minimum_resumes_and_shares_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    config = TuneConfig(n_trials=60, factor_range=(0.05, 2.0), seed=0)
    first = tune_scales(quadratic, torch.tensor([1.0]), config, storage=storage, study_name="quad", progress=False)
    assert first.value < 0.05
    assert first.n_trials == 60
    assert abs(float(first.scales[0]) - 1.3) < 0.05**0.5
    assert first.value == pytest.approx(quadratic(first.scales), abs=1e-6)
    assert first.factors == pytest.approx([float(first.scales[0])])
    assert n_complete(storage, "quad") == 60

    # A rerun with a larger budget only runs the missing trials.
    again = tune_scales(quadratic, torch.tensor([1.0]), TuneConfig(n_trials=80, seed=0), storage=storage, study_name="quad", progress=False)
    assert again.n_trials == 80
    assert n_complete(storage, "quad") == 80
    assert again.value <= first.value

    # A rerun with a budget already met runs nothing.
    done = tune_scales(quadratic, torch.tensor([1.0]), TuneConfig(n_trials=50, seed=0), storage=storage, study_name="quad", progress=False)
    assert done.n_trials == 80 and done.value == again.value

    # A second process works on the same study.
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, storage, "95"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "N_TRIALS 95" in proc.stdout
    assert n_complete(storage, "quad") == 95


def test_tune_scales_with_journal_file_storage(tmp_path):
    """A file path (not a URL) is a journal storage that resumes like a database."""
    path = str(tmp_path / "optuna.journal")
    config = TuneConfig(n_trials=15, factor_range=(0.05, 2.0), seed=0)
    first = tune_scales(quadratic, torch.tensor([1.0]), config, storage=path, study_name="quad", progress=False)
    assert first.n_trials == 15
    again = tune_scales(quadratic, torch.tensor([1.0]), TuneConfig(n_trials=20), storage=path, study_name="quad", progress=False)
    assert again.n_trials == 20


def test_tune_scales_search_signs_in_memory():
    result = tune_scales(
        lambda s: float((s[0] + 0.8) ** 2 + (s[1] - 0.5) ** 2),
        torch.tensor([1.0, 0.5]),
        TuneConfig(n_trials=60, factor_range=(0.05, 2.0), search_signs=True, seed=0),
        storage=None,
        study_name="signs",
        progress=False,
    )
    assert result.scales[0] < 0 < result.scales[1]
    assert result.value < 0.1
    torch.testing.assert_close(result.scales, torch.tensor([1.0, 0.5]) * torch.tensor(result.factors))


def test_tune_scales_argument_checks():
    with pytest.raises(ValueError, match="factor_range"):
        tune_scales(quadratic, torch.tensor([1.0]), TuneConfig(n_trials=2, factor_range=(2.0, 1.0)), None, "x", progress=False)
    with pytest.raises(ValueError, match="n_trials"):
        tune_scales(quadratic, torch.tensor([1.0]), TuneConfig(n_trials=0), None, "x", progress=False)


def test_objectives():
    reference = {"p+p": 0.1, "n+n": 0.9, "p+t": 0.8}
    match = match_objective(reference)
    assert match(reference) == 0.0
    assert match({"p+p": 0.2, "n+n": 0.9, "p+t": 0.5}) == pytest.approx((0.01 + 0.09) / 3)
    target = target_objective(reference, ("p+t",), 0.0)
    assert target({"p+p": 0.1, "n+n": 0.9, "p+t": 0.0}) == 0.0
    assert target({"p+p": 0.3, "n+n": 0.9, "p+t": 0.5}) == pytest.approx(0.25 + 0.04 / 2)


# ---- Collection ----------------------------------------------------------------------------------
def test_collect_activations_batches_and_positions(model, tokens):
    hook = "blocks.0.hook_mlp_out"
    whole = collect_activations(model, tokens, [hook])[hook]
    chunked = collect_activations(model, tokens, [hook], batch_size=3)[hook]
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    last = collect_activations(model, tokens, [hook], position=-1)[hook]
    torch.testing.assert_close(last, whole[:, -1])
    with pytest.raises(ValueError, match="hook_names"):
        collect_activations(model, tokens, ["blocks.0.hook_nope"])
    with pytest.raises(ValueError, match="tokens"):
        collect_activations(model, tokens[:0], [hook])


def test_module_io_inputs_are_layer_norm_outputs(model, tokens):
    h, y = module_io(model, tokens, "blocks.1.attn")
    cache = collect_activations(model, tokens, ["blocks.1.ln1.hook_normalized", "blocks.1.hook_attn_out"])
    # With the default LN weight 1 and bias 0, ln1's output is its normalized activation.
    torch.testing.assert_close(h, cache["blocks.1.ln1.hook_normalized"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, cache["blocks.1.hook_attn_out"])
    with pytest.raises(ValueError, match="layer-norm"):
        module_io(model, tokens, "embed")


def test_module_means_and_persistence(model, tokens, tmp_path):
    modules = ["blocks.0.mlp", "embed"]
    means = module_means(model, tokens, modules, position=2, batch_size=3)
    for module, hook in (("blocks.0.mlp", "blocks.0.hook_mlp_out"), ("embed", "hook_embed")):
        direct = collect_activations(model, tokens, [hook], position=2)[hook].mean(0)
        torch.testing.assert_close(means[module], direct, atol=1e-6, rtol=1e-6)
    save_means(tmp_path / "means.safetensors", means)
    loaded = load_means(tmp_path / "means.safetensors")
    assert set(loaded) == set(modules)
    assert all(torch.equal(loaded[m], means[m]) for m in modules)
