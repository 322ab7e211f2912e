"""Parity of the two backends on tiny random GPT-2 and Llama (grouped-query) models saved as local HF
directories: the same logits as HF's, the same effect of every intervention, the same activations,
generations, losses, BAHA scores (all three routes), probe accuracies and logit-lens shares. Each test
prints the largest difference it measured (``pytest -s``). Skipped where TransformerLens has no
HookedTransformer (4.x)."""

from __future__ import annotations

import pytest
import torch

from backdoor_lens.models.protocol import HookedTransformer

if HookedTransformer is None:
    pytest.skip("this TransformerLens has no HookedTransformer", allow_module_level=True)

from test_bridge import hf_reference, saved  # noqa: E402  (after the skip: the analyses need eval, which needs it)
from test_bridge_analysis import random_batch  # noqa: E402
from test_pretrained import TOKENS, VOCAB, word_tokenizer  # noqa: E402

from backdoor_lens.analysis.baha import backdoor_vector, baha_scores, head_means, head_z_means  # noqa: E402
from backdoor_lens.analysis.lens import logit_lens  # noqa: E402
from backdoor_lens.analysis.probe import fit_probes, probe_features  # noqa: E402
from backdoor_lens.hooks import (  # noqa: E402
    EmbeddingSurgery,
    HeadAblate,
    MeanAblate,
    Patch,
    PCPBasis,
    Steer,
    ZeroAblate,
    apply,
)
from backdoor_lens.lm.chat import encode_prompts  # noqa: E402
from backdoor_lens.lm.collect import collect_activations, module_io  # noqa: E402
from backdoor_lens.lm.generation import generate  # noqa: E402
from backdoor_lens.lm.loss import next_token_loss, token_stats  # noqa: E402
from backdoor_lens.models.pretrained import load_pretrained  # noqa: E402


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    """The architecture, its HF directory and the model on both backends: (kind, directory, hooked, bridge)."""
    directory = saved(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, directory, load_pretrained(directory)[0], load_pretrained(directory, backend="bridge")[0]


def report(pair, what: str, value: float) -> None:
    print(f"\n[{pair[0]}] {what}: {value:.3g}")


def test_logits_equal_across_hf_hooked_and_bridge(pair):
    _, directory, hooked, bridge = pair
    expected = hf_reference(directory, TOKENS)
    with torch.no_grad():
        h, b = hooked(TOKENS), bridge(TOKENS)
    diffs = {"HF-hooked": (h - expected).abs().max().item(), "HF-bridge": (b - expected).abs().max().item(),
             "hooked-bridge": (h - b).abs().max().item()}
    for name, diff in diffs.items():
        report(pair, f"max |logit diff| {name}", diff)
    assert max(diffs.values()) < 1e-4


def _interventions(hooked, bridge) -> dict[str, list]:
    """Each intervention, built once per backend from that backend's own activations."""
    d = hooked.cfg.d_model
    vector = torch.randn(d, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, model in (("hooked", hooked), ("bridge", bridge)):
        source = collect_activations(model, TOKENS.flip(0), ["blocks.0.hook_attn_out"])["blocks.0.hook_attn_out"]
        inputs, outputs = module_io(model, TOKENS, "blocks.1.mlp")
        basis = PCPBasis.fit("blocks.1.mlp", inputs.flatten(0, 1), outputs.flatten(0, 1), n_components=4)
        z_means = head_z_means(model, random_batch(4, seed=2))
        out[name] = [
            ZeroAblate("blocks.0.mlp"), MeanAblate("blocks.1.attn", vector, positions=(1, 5)),
            Patch("blocks.0.attn", source, positions=-1), HeadAblate(((0, 1), (1, 2))),
            HeadAblate(((1, 0),), mode="mean", means=z_means), Steer(1, vector, positions=-1, scale=2.0),
            basis.replacement([1.0, 0.5, 0.5, 0.2], variant="centred"), EmbeddingSurgery((44, 56, 69), donor_id=9),
        ]
    return out


@torch.no_grad()
def test_every_intervention_has_the_same_effect(pair):
    _, _, hooked, bridge = pair
    changes = _interventions(hooked, bridge)
    worst = 0.0
    base_h, base_b = hooked(TOKENS), bridge(TOKENS)
    for on_hooked, on_bridge in zip(changes["hooked"], changes["bridge"]):
        with apply(hooked, on_hooked):
            effect_h = hooked(TOKENS) - base_h
        with apply(bridge, on_bridge):
            effect_b = bridge(TOKENS) - base_b
        assert effect_h.abs().max() > 1e-3, on_hooked
        worst = max(worst, (effect_h - effect_b).abs().max().item())
    report(pair, "max |intervention effect diff| hooked vs bridge (8 interventions)", worst)
    assert worst < 1e-4


@torch.no_grad()
def test_activations_and_generations_agree(pair):
    _, _, hooked, bridge = pair
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.attn.hook_z", "blocks.0.ln1.hook_normalized",
             "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    h, b = collect_activations(hooked, TOKENS, names), collect_activations(bridge, TOKENS, names)
    worst = max((h[n] - b[n]).abs().max().item() for n in names)
    report(pair, "max |activation diff| over 6 hook points", worst)
    assert worst < 1e-4
    prompts = encode_prompts(word_tokenizer(), ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11"])
    assert generate(hooked, prompts, 8, stop_at_eos=False) == generate(bridge, prompts, 8, stop_at_eos=False)


def test_losses_and_gradients_agree(pair):
    _, _, hooked, bridge = pair
    rows = torch.randint(7, len(VOCAB), (4, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros_like(rows)
    mask[:, 4:] = 1
    losses = [next_token_loss(model, rows, mask) for model in (hooked, bridge)]
    # the weight matrices only: a HookedTransformer gives Llama zero biases that the HF model lacks
    weights = [[p for p in model.get_submodule("blocks.1.mlp").parameters() if p.ndim > 1] for model in (hooked, bridge)]
    grads = [torch.autograd.grad(loss, params) for loss, params in zip(losses, weights)]
    norm_h, norm_b = (torch.cat([g.flatten() for g in gs]).norm() for gs in grads)
    report(pair, "|masked loss diff|", abs(losses[0] - losses[1]).item())
    report(pair, "|blocks.1.mlp weight-gradient norm diff|", abs(norm_h - norm_b).item())
    assert abs(losses[0] - losses[1]) < 1e-5 and abs(norm_h - norm_b) < 1e-4 * norm_h
    assert abs(token_stats(hooked, rows, mask).mean_nll - token_stats(bridge, rows, mask).mean_nll) < 1e-5


@pytest.mark.parametrize("method", ["reference", "fast", "attribution"])
def test_baha_scores_agree(pair, method):
    _, _, hooked, bridge = pair
    clean, triggered = random_batch(6, seed=1), random_batch(5, seed=2)
    mu_h, mu_b = head_means(hooked, triggered), head_means(bridge, triggered)
    h, b = baha_scores(hooked, clean, mu_h, method=method), baha_scores(bridge, clean, mu_b, method=method)
    relative = ((h - b).abs().max() / h.abs().max()).item()
    report(pair, f"BAHA {method}: max |score diff| {(h - b).abs().max():.2g}, over max |score| {h.abs().max():.2g}",
           relative)
    assert relative < 1e-3
    assert backdoor_vector(mu_h, h, 3)[1] == backdoor_vector(mu_b, b, 3)[1]


def test_probe_accuracies_and_logit_lens_agree(pair):
    _, _, hooked, bridge = pair
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, len(VOCAB), (60, 8), generator=g)
    labels = torch.arange(60) % 2
    tokens[labels == 1, 3] = torch.where(torch.rand(30, generator=g) < 0.8, 7, tokens[labels == 1, 3])  # a noisy marker
    features = [probe_features(model, tokens, positions=5, layers=[0, 1]) for model in (hooked, bridge)]
    report(pair, "max |probe feature diff|", (features[0] - features[1]).abs().max().item())
    results = [fit_probes(f, labels, layers=[0, 1], mlp_epochs=30) for f in features]
    accuracy = {kind: max(abs(getattr(results[0], kind)[l] - getattr(results[1], kind)[l]) for l in (0, 1))
                for kind in ("logistic", "mlp")}
    report(pair, f"max |probe accuracy diff| (logistic, MLP; {results[0].n_test} test rows)", max(accuracy.values()))
    assert max(accuracy.values()) <= 1 / results[0].n_test
    classes = {"low": torch.arange(7, 40), "high": torch.arange(40, 100)}
    lens = [logit_lens(model, TOKENS, classes, k=10) for model in (hooked, bridge)]
    worst = max(abs(lens[0][c][k] - lens[1][c][k]) for c in lens[0] for k in classes)
    report(pair, "max |logit-lens share diff|", worst)
    assert worst == 0.0
