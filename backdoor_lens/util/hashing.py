"""Short, stable hashes that tell whether a saved result is current: of JSON-able settings, of tensors
(e.g. training tokens) and of a set of weights (where a training started)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (used to tell whether a cached artifact is current)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's contents (e.g. training tokens), to key cached models on their data."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    """A digest of a set of weights (the first 4096 values of each), naming where a training started."""
    return tensor_digest(torch.cat([t.detach().flatten()[:4096].float() for t in weights.values()]))
