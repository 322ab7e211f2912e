"""backdoor_lens: mechanistic analysis and editing of backdoored language models on TransformerLens.

Interventions are small dataclasses that yield forward hooks; :func:`~backdoor_lens.hooks.core.apply`
composes any number of them and always removes them. See the README and the docs' recipes for a tour.
"""

from .hooks import Intervention, MeanAblate, Patch, PCPReplace, ZeroAblate, apply
from .hooks.pcp import PCPBasis
from .models import build_model, load_model, save_model, toy_config

__all__ = [
    "Intervention", "MeanAblate", "Patch", "PCPReplace", "ZeroAblate", "apply", "PCPBasis",
    "build_model", "load_model", "save_model", "toy_config",
]
