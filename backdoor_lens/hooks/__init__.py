"""Composable interventions: small frozen dataclasses that yield TransformerLens forward hooks.

Compose by listing them; :func:`~backdoor_lens.hooks.core.apply` adds every hook for the duration of
a ``with`` block and always removes them, even when a hook raises, leaving hooks that were added
before untouched.
"""

from .ablate import MeanAblate, ZeroAblate
from .core import Intervention, PerRow, apply, hooks_of
from .heads import HeadAblate
from .patch import Patch
from .pcp import PCPReplace
from .steer import Steer

__all__ = [
    "Intervention", "apply", "hooks_of", "MeanAblate", "ZeroAblate", "Patch", "PCPReplace", "HeadAblate", "PerRow", "Steer",
]
