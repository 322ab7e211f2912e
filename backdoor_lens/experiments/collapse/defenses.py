"""The trigger-agnostic defenses the grid runs beside Backdoor Collapse, built from one settings
record so every attack and seed gets the same ones (CleanGen also needs the base model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...defense import (
    Beear,
    CleanFineTuning,
    CleanGen,
    Crow,
    DecodingTemperature,
    Defense,
    FinePruning,
    Quantization,
)
from ...models.protocol import HookedModel
from ...util.validation import check_choice

TRIGGER_AGNOSTIC = ("clean_ft", "fine_pruning", "crow", "beear", "int8", "int4", "temperature", "cleangen")
"""Grid columns besides Collapse, in report order; all see only the defender's clean prompts."""
TRAINED = ("clean_ft", "fine_pruning", "crow", "beear")
"""The columns that train, each for Collapse's number of optimiser steps."""
DECODING = ("temperature", "cleangen")
"""The columns that change decoding only: their logits are the suspect model's, so teacher-forced
clean accuracy cannot see them, and their clean cost is read from the replies they generate."""


@dataclass(frozen=True)
class DefenseSettings:
    """The defenses' own settings (their papers' defaults where they give one)."""

    prune_share: float = 0.2
    crow_weight: float = 1.0
    crow_epsilon: float = 0.1
    beear_radius: float = 0.5
    beear_inner_steps: int = 5
    temperature: float = 1.0
    cleangen_alpha: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict."""
        return asdict(self)


def build_defense(name: str, settings: DefenseSettings, reference: HookedModel | None) -> Defense:
    """The defense of grid column `name`; `reference` (the base model) is needed by CleanGen only."""
    check_choice("defense", name, TRIGGER_AGNOSTIC)
    if name == "cleangen":
        if reference is None:
            raise ValueError("defense='cleangen' needs the base model as its reference; this study has none")
        return CleanGen(reference=reference, alpha=settings.cleangen_alpha)
    return {
        "clean_ft": CleanFineTuning(),
        "fine_pruning": FinePruning(share=settings.prune_share),
        "crow": Crow(weight=settings.crow_weight, epsilon=settings.crow_epsilon),
        "beear": Beear(radius=settings.beear_radius, inner_steps=settings.beear_inner_steps),
        "int8": Quantization(bits=8),
        "int4": Quantization(bits=4),
        "temperature": DecodingTemperature(temperature=settings.temperature),
    }[name]
