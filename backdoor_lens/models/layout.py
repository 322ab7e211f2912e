"""Weights stored in the memory layout that TransformerLens's forward pass reads them in.

HookedTransformer rearranges several weights on every forward pass, copying them when their layout
does not match: the gated MLP's ``W_gate``, ``W_in`` and ``W_out`` and the unembedding's ``W_U``
(``W.T.contiguous()``), the attention output ``W_O`` (to d_model x head d_head) and the query, key
and value weights (to head d_head x d_model). On SmolLM2-135M those copies were half of a greedy
decoding step on the CPU. :func:`use_read_layout` stores each weight as a strided view of a buffer
already laid out as it is read, so the rearrangement is a free view. Shapes, values, ``state_dict``
keys and saved files are unchanged, and the forward pass reads identical memory, so outputs and
training are bitwise the same; only the strides of these parameters differ.
"""

from __future__ import annotations

import torch

_ATTENTION = {"W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
              "W_O": (2, 0, 1)}
READ_ORDERS: dict[str, dict[str, tuple[int, ...]]] = {
    "GatedMLP": {"W_gate": (1, 0), "W_in": (1, 0), "W_out": (1, 0)},
    "Unembed": {"W_U": (1, 0)},
    "Attention": _ATTENTION,
    "GroupedQueryAttention": _ATTENTION,
}
"""The dimension order in which TransformerLens reads each weight, by module class and parameter name.
The plain MLP is absent: it reads ``W_in`` and ``W_out`` as stored."""


def laid_out(weight: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """`weight`'s values in a buffer contiguous in dimension order `order`, viewed back in its own shape."""
    inverse = tuple(order.index(d) for d in range(len(order)))
    return weight.permute(order).contiguous().permute(inverse)


def use_read_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Store `model`'s weights in the layout TransformerLens reads them in (see the module docstring);
    in place, returns `model`. Parameters keep their identity, so optimisers and hooks still hold them."""
    with torch.no_grad():
        for module in model.modules():
            orders = READ_ORDERS.get(type(module).__name__, {})
            for name, param in module.named_parameters(recurse=False):
                if name in orders and param.ndim == len(orders[name]):
                    param.data = laid_out(param.data, orders[name])
    return model
