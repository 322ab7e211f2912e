"""Interventions: small frozen dataclasses that yield TransformerLens forward hooks (what to change),
placed by module names or hook names (where) at ``Positions`` (which tokens).

Compose by listing them; :func:`~backdoor_lens.hooks.core.apply` adds every hook for the duration of a ``with`` block and always
removes them, even when a hook raises, leaving hooks that were added before untouched. It also takes
weight edits (embedding surgery, frozen modules), and :func:`~backdoor_lens.hooks.core.restored` undoes in-place training.
"""

from .ablate import MeanAblate, ZeroAblate
from .core import Change, Hook, Intervention, WeightEdit, apply, hooks_of, restored
from .heads import HeadAblate
from .patch import Patch
from .pcp import PCPBasis, PCPReplace
from .positions import PerRow, Positions
from .sites import Site, module_names, module_sites, resolve_site
from .steer import Steer
from .surgery import EmbeddingSurgery

__all__ = [
    "Change", "Hook", "Intervention", "WeightEdit", "apply", "hooks_of", "restored",
    "MeanAblate", "ZeroAblate", "HeadAblate", "Patch", "PCPBasis", "PCPReplace", "Steer", "EmbeddingSurgery",
    "PerRow", "Positions", "Site", "module_names", "module_sites", "resolve_site",
]
