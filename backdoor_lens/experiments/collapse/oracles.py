"""The baselines that read the attacker's triggered prompts (a selection split), an oracle a real
defender lacks: BkdAttr's head ablation and backdoor-vector subtraction (arXiv 2509.21761), and one
MLP mean-ablated (Lamparth & Reuel, arXiv 2302.12461). They bound what a trigger-aware edit can do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import torch

from ...analysis.baha import (
    backdoor_vector,
    baha_scores,
    head_means,
    n_heads_for,
    top_heads,
)
from ...data.instruct import Attack
from ...hooks import HeadAblate, MeanAblate, Steer
from ...lab.chat_model import ChatModel, EditFactory
from ...lm.collect import module_means


def candidate_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """Layers the vector and mean-ablation baselines choose among: `layers`, or every fifth and the last."""
    return tuple(layers) if layers else tuple(sorted(set(range(0, n_layers, 5)) | {n_layers - 1}))


def pick_layer(chat: ChatModel, attack: Attack, triggered: list[str], layers: Sequence[int],
               edits_at: Callable[[int], EditFactory]) -> dict[str, Any]:
    """The layer whose edit leaves the lowest ASR on the selection prompts (the earliest on ties)."""
    rows = [{"layer": layer, "asr": chat.asr(triggered, attack.target, edits_at(layer))} for layer in layers]
    return {"layer": min(rows, key=lambda r: r["asr"])["layer"], "selection": rows}


class OracleBaselines:
    """The baselines that read the attacker's triggered prompts (selection split only), fitted on the
    undefended model: BAHA head ablation, backdoor-vector subtraction and MLP mean ablation."""

    def __init__(self, chat: ChatModel, attack: Attack, layers: Sequence[int] | None, head_fraction: float,
                 clean: list[str], triggered: list[str]):
        self.chat, self.attack, self.clean, self.triggered = chat, attack, clean, triggered
        self.layers = candidate_layers(layers, chat.model.cfg.n_layers)
        self.total_heads = chat.model.cfg.n_layers * chat.model.cfg.n_heads
        self.k = n_heads_for(head_fraction, self.total_heads)

    @cached_property
    def mu(self) -> torch.Tensor:
        """Each head's mean output on the triggered selection prompts."""
        return head_means(self.chat.model, self.chat.target_batch(self.triggered, self.attack.target))

    @cached_property
    def scores(self) -> torch.Tensor:
        """BAHA scores (fast exact route) on the clean selection prompts."""
        return baha_scores(self.chat.model, self.chat.target_batch(self.clean, self.attack.target), self.mu, "fast")

    def baha_heads(self) -> tuple[dict[str, Any], EditFactory]:
        """Zero-ablate the top heads by BAHA score (BkdAttr's head ablation)."""
        heads = tuple(top_heads(self.scores, self.k))
        return {"heads": [list(h) for h in heads], "n_heads": self.k, "total_heads": self.total_heads}, lambda positions: [HeadAblate(heads, positions=positions, mode="zero")]

    def vector(self) -> tuple[dict[str, Any], EditFactory]:
        """Subtract the backdoor vector (the top heads' mean outputs) at the layer that works best on selection."""
        vector, heads = backdoor_vector(self.mu, self.scores, self.k)

        def subtract(layer: int) -> EditFactory:
            return lambda positions: [Steer(layer, vector, positions=positions, scale=-1.0)]

        choice = pick_layer(self.chat, self.attack, self.triggered, self.layers, subtract)
        return choice | {"heads": [list(h) for h in heads], "norm": round(float(vector.norm()), 4)}, subtract(choice["layer"])

    def mean_ablation(self) -> tuple[dict[str, Any], EditFactory]:
        """Replace one MLP's output by its mean over clean selection prompts, at the best layer on selection."""
        batch = self.chat.target_batch(self.clean, self.attack.target)
        modules = [f"blocks.{layer}.mlp" for layer in self.layers]
        means = module_means(self.chat.model, batch.tokens, modules, position=batch.prompt_end)

        def ablate(layer: int) -> EditFactory:
            module = f"blocks.{layer}.mlp"
            return lambda positions: [MeanAblate(module, means[module], positions=positions)]

        choice = pick_layer(self.chat, self.attack, self.triggered, self.layers, ablate)
        return choice, ablate(choice["layer"])
