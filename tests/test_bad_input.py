"""Bad input gets an error that names the argument and what would be valid, before any forward pass
reaches torch: every case of the catalogue that a new user ran into, in one place."""

from __future__ import annotations

import pytest
import torch

import backdoor_lens as bl
from backdoor_lens.lm.collect import collect_activations
from backdoor_lens.lm.generation import generate
from backdoor_lens.lm.logits import next_token_logits

N_CTX, D_VOCAB = 8, 50


def forward_spy(model) -> list[int]:
    """Counts forward passes (a hook on the embedding), so a test can assert none ran."""
    calls: list[int] = []
    model.hook_dict["hook_embed"].add_hook(lambda act, hook: calls.append(1))
    return calls


CASES = {
    "hook position out of range for the context": (
        lambda m, t: bl.apply(m, bl.ZeroAblate("blocks.0.mlp", positions=N_CTX)).__enter__(),
        r"positions holds position 8; valid positions lie in \[-8, 8\)"),
    "hook position out of range for the sequence": (
        lambda m, t: _run_with(m, t[:, :3], bl.ZeroAblate("blocks.0.mlp", positions=5)),
        r"position 5 is out of range for blocks.0.hook_mlp_out, whose sequences have 3 positions; valid: \[-3, 3\)"),
    "per-row positions of the wrong length": (
        lambda m, t: _run_with(m, t, bl.Steer(0, torch.ones(16), positions=torch.tensor([0, 1]))),
        r"PerRow has 2 positions but blocks.0.hook_attn_out has batch size 4"),
    "float positions": (
        lambda m, t: bl.ZeroAblate("blocks.0.mlp", positions=1.5),
        r"positions=1.5 is not valid"),
    "prompts longer than n_ctx (collect)": (
        lambda m, t: collect_activations(m, torch.zeros(2, N_CTX + 1, dtype=torch.long), ["hook_embed"]),
        r"tokens has 9 positions; the model's context \(n_ctx\) is 8"),
    "prompts longer than n_ctx (generation)": (
        lambda m, t: generate(m, [[1] * N_CTX], max_new_tokens=4, stop_at_eos=False),
        r"the model's n_ctx is 8"),
    "token ids beyond the vocabulary (metrics)": (
        lambda m, t: bl.negativity_by_class(m, {"p+p": torch.full((2, 2), D_VOCAB)}, torch.tensor([1, 2])),
        r"eval_tokens\['p\+p'\] holds token id 50; valid ids are \[0, 50\)"),
    "negative token ids": (
        lambda m, t: next_token_logits(m, torch.full((2, 2), -1)),
        r"tokens holds token id -1; valid ids are \[0, 50\)"),
    "float tokens (metrics)": (
        lambda m, t: bl.negativity_by_class(m, {"p+p": torch.zeros(2, 2)}, torch.tensor([1, 2])),
        r"eval_tokens\['p\+p'\] has dtype torch.float32; token ids must be integers"),
    "1-D tokens to negativity_by_class": (
        lambda m, t: bl.negativity_by_class(m, {"p+p": torch.tensor([1, 2])}, torch.tensor([1, 2])),
        r"eval_tokens\['p\+p'\] has shape \(2,\); expected \[batch, pos\]"),
    "words instead of negative_ids": (
        lambda m, t: bl.negativity_by_class(m, {"p+p": t[:, :2]}, ["awful", "bad"]),
        r"negative_ids must be token ids \(ints\)"),
    "negative_ids beyond the vocabulary": (
        lambda m, t: bl.negativity_by_class(m, {"p+p": t[:, :2]}, torch.tensor([99])),
        r"negative_ids holds ids outside \[0, 50\)"),
    "a string where a list of modules is expected": (
        lambda m, t: bl.module_means(m, t, "blocks.0.mlp"),
        r"modules='blocks.0.mlp' must be a list or tuple of names, e.g. \['blocks.0.mlp'\]"),
    "a string where a list of hook names is expected": (
        lambda m, t: collect_activations(m, t, "hook_embed"),
        r"hook_names='hook_embed' must be a list or tuple of names"),
    "a string where a list of frozen modules is expected": (
        lambda m, t: bl.Freeze("embed"),
        r"modules='embed' must be a list or tuple of names"),
    "unknown module name": (
        lambda m, t: bl.module_means(m, t, ["blocks.7.mlp"]),
        r"module='blocks.7.mlp' is neither a module nor a hook point of this model; valid modules: embed"),
    "PCP rank beyond the fitted components": (
        None,
        r"rank=9 is not valid; this basis has 8 fitted components, so rank must lie in \[1, 8\]"),
    "NaN in an intervention's values": (
        lambda m, t: bl.MeanAblate("blocks.0.mlp", torch.full((16,), float("nan"))),
        r"mean contains NaN or infinite values"),
    "NaN learning rate": (
        lambda m, t: bl.TrainConfig(lr=float("nan")),
        r"lr=nan is not finite"),
    "infinite count": (
        lambda m, t: bl.TrainConfig(epochs=float("inf")),
        r"epochs=inf is not finite"),
    "empty data": (
        lambda m, t: collect_activations(m, t[:0], ["hook_embed"]),
        r"tokens is empty"),
}


def _run_with(model, tokens, *interventions):
    with bl.apply(model, *interventions):
        model(tokens)


def _basis(model, tokens):
    inputs, outputs = bl.module_io(model, tokens.repeat(4, 1), "blocks.0.mlp", position=-1)
    return bl.PCPBasis.fit("blocks.0.mlp", inputs, outputs, n_components=8)


INSIDE_THE_PASS = {"hook position out of range for the sequence", "per-row positions of the wrong length"}
"""A sequence's length is only known once it arrives: these are caught by the first hook, before it acts."""


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named_before_torch_sees_it(case, model, tokens):
    action, message = CASES[case]
    basis = _basis(model, tokens) if case.startswith("PCP") else None
    calls = forward_spy(model)
    with pytest.raises((ValueError, TypeError), match=message):
        action(model, tokens) if basis is None else basis.directions(9)
    if case not in INSIDE_THE_PASS:
        assert calls == [], f"{case}: a forward pass ran before the error"
    assert not any(h.fwd_hooks for name, h in model.hook_dict.items() if name != "hook_embed")
    model.reset_hooks()
