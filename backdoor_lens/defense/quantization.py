"""Weight quantisation as a defense, simulated in float (BackdoorLLM's DefenseBox evaluates INT8 and
INT4 deployment, arXiv 2408.12798): rounding every linear weight to a coarse integer grid may erase
the small, precise weight changes a backdoor rides on. It needs no data and no training.

Quantisation is symmetric, per output channel (or per group of `group_size` inputs within a
channel): ``scale = max |w| / (2^(bits-1) - 1)``, ``w -> round(w / scale) * scale``. Each weight is
read as the matrix that maps its inputs to its outputs: ``W_Q`` / ``W_K`` / ``W_V`` as d_model ->
head x d_head, ``W_O`` as head x d_head -> d_model, ``W_in`` / ``W_gate`` / ``W_out`` as they are,
and, optionally, the embedding as one row per token and the unembedding as d_model -> vocabulary.
Biases and norms stay in float, as in weight-only quantisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from transformers import PreTrainedTokenizerBase

from ..models.protocol import HookedModel
from ..util.validation import check_range
from .base import Budget, DefendedModel

INPUT_DIMS = {"W_Q": (1,), "W_K": (1,), "W_V": (1,), "_W_K": (1,), "_W_V": (1,), "W_O": (0, 1),
              "W_in": (0,), "W_gate": (0,), "W_out": (0,)}
"""The linear weights quantised, and which of their dimensions are inputs (the rest are output channels)."""
EMBEDDING_INPUT_DIMS = {"W_E": (1,), "W_U": (0,)}
"""The embedding (one channel per token) and the unembedding (one channel per vocabulary logit)."""


def symmetric_grid(
    matrix: Float[torch.Tensor, "out n_in"], bits: int, group_size: int | None = None
) -> tuple[torch.Tensor, Float[torch.Tensor, "out groups"]]:
    """Integer codes in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` (as floats, shape of `matrix`) and one
    scale per output row and group of `group_size` inputs (the whole row when None), so that
    ``codes * scale`` (scales repeated over each group) is the quantised matrix."""
    check_range("bits", bits, 2, 16)
    n_in = matrix.shape[1]
    group = n_in if group_size is None else group_size
    check_range("group_size", group, 1)
    if n_in % group:
        raise ValueError(f"group_size={group_size} does not divide the weight's {n_in} inputs; choose a divisor")
    levels = 2 ** (bits - 1) - 1
    grouped = matrix.float().reshape(matrix.shape[0], n_in // group, group)
    scale = grouped.abs().amax(-1) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = (grouped / safe[..., None]).round().clamp(-levels, levels)
    return codes.reshape(matrix.shape), scale


def fake_quantize(
    weight: torch.Tensor, bits: int, input_dims: tuple[int, ...], group_size: int | None = None
) -> torch.Tensor:
    """`weight` rounded to the symmetric grid of :func:`symmetric_grid` and back to float, its
    `input_dims` read as inputs and the other dimensions as output channels."""
    bad = [d for d in input_dims if not 0 <= d < weight.ndim]
    if bad or not input_dims or len(input_dims) == weight.ndim:
        raise ValueError(f"input_dims={input_dims} must name some but not all of the weight's {weight.ndim} dimensions")
    outputs = tuple(d for d in range(weight.ndim) if d not in input_dims)
    order = outputs + input_dims
    permuted = weight.permute(order)
    matrix = permuted.reshape(math.prod(permuted.shape[: len(outputs)]), -1)
    codes, scale = symmetric_grid(matrix, bits, group_size)
    group = matrix.shape[1] // scale.shape[1]
    restored = (codes * scale.repeat_interleave(group, dim=1)).to(weight.dtype)
    return restored.reshape(permuted.shape).permute([order.index(d) for d in range(weight.ndim)])


@torch.no_grad()
def quantize_model(
    model: HookedModel, bits: int, group_size: int | None = None, embeddings: bool = False
) -> list[str]:
    """Replace, in place, every linear weight (and the embeddings when `embeddings`) by its
    :func:`fake_quantize` round trip. Returns the names of the parameters changed."""
    dims = INPUT_DIMS | (EMBEDDING_INPUT_DIMS if embeddings else {})
    changed = []
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in dims:
            param.copy_(fake_quantize(param, bits, dims[leaf], group_size))
            changed.append(name)
    return changed


@dataclass(frozen=True)
class Quantization:
    """Round the model's weights to `bits`-bit integers and back, in place (8: INT8, 4: INT4), per
    output channel or per group of `group_size` inputs, the embeddings too when `embeddings`. Uses
    neither the clean data nor the budget."""

    bits: int = 8
    group_size: int | None = None
    embeddings: bool = False

    def __post_init__(self) -> None:
        check_range("bits", self.bits, 2, 16)
        if self.group_size is not None:
            check_range("group_size", self.group_size, 1)

    @property
    def name(self) -> str:
        """``int8``, ``int4``, ...; a group size is appended as ``-g<size>``."""
        return f"int{self.bits}" + ("" if self.group_size is None else f"-g{self.group_size}")

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """Quantise `model` in place; the result's facts name the quantised parameters."""
        return DefendedModel(model, facts={"quantized": quantize_model(model, self.bits, self.group_size, self.embeddings)})
