"""Weights in TransformerLens's read layout: free rearrangements, bitwise the same outputs and training."""

from __future__ import annotations

import copy

import pytest
import torch
from test_smollm_study import tiny

from backdoor_lens.lm.lora import LoraConfig, lora_adapters
from backdoor_lens.lm.training import TrainConfig, train
from backdoor_lens.models.layout import use_read_layout


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_read_layout_changes_strides_only_and_keeps_every_bit(kind):
    plain = tiny(kind, 500)
    laid = use_read_layout(copy.deepcopy(plain))
    assert list(laid.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), laid.state_dict().values()))
    assert laid.unembed.W_U.T.is_contiguous() and not plain.unembed.W_U.T.is_contiguous()
    attn = laid.blocks[0].attn
    assert attn.W_O.permute(2, 0, 1).is_contiguous() and attn.W_Q.permute(0, 2, 1).is_contiguous()
    if kind == "llama":  # the gated MLP's weights are read transposed; the plain MLP's as stored
        assert laid.blocks[0].mlp.W_gate.T.is_contiguous()
    else:
        assert laid.blocks[0].mlp.W_in.is_contiguous()

    tokens = torch.randint(0, 500, (6, 10), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain(tokens), laid(tokens))
    config = TrainConfig(epochs=2, lr=1e-2, batch_size=3, seed=1)
    for model in (plain, laid):
        train(model, tokens, config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), laid.parameters()))
    assert laid.unembed.W_U.T.is_contiguous()  # training kept the layout


def test_a_merged_lora_update_keeps_the_read_layout():
    model = use_read_layout(tiny("llama", 500))
    strides = {n: p.stride() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 500, (4, 8), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with lora_adapters(model, LoraConfig(rank=2)):
        train(model, tokens, TrainConfig(epochs=2, lr=1e-2, batch_size=4), progress=False)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n: p.stride() for n, p in model.named_parameters()} == strides
