"""PCP (principal component projection) replacement of a module by a symmetric low-rank matrix.

Lamparth & Reuel replace a module by ``module(h) := A h`` with ``A = sum_k alpha_k v_k v_k^T``,
``h`` the module's input (its layer norm's output) and ``v_k`` principal directions of the module's
outputs. Two ways to build ``v_k`` are offered (say which a result used):

- ``"faithful"`` (the authors' code): ``v_k = (mu + c_k u_k) / ||mu + c_k u_k||``, built with PCA's
  inverse transform, so the output mean ``mu`` is folded into each direction; no bias.
- ``"centred"``: ``v_k = u_k`` and the means are kept apart:
  ``module(h) := mu_out + sum_k alpha_k u_k u_k^T (h - mu_in)``. At full rank it reproduces a
  symmetric affine module ``W h + b`` exactly when the principal directions of its outputs are
  eigenvectors of ``W`` (e.g. for whitened inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from ..models.protocol import HookedModel
from ..util.io import load_artifact, save_artifact
from ..util.validation import (
    check_choice,
    check_finite,
    check_last_dim,
    check_nonempty,
    check_range,
)
from .core import Hook
from .sites import resolve_site

Variant = Literal["faithful", "centred"]
VARIANTS = ("faithful", "centred")


@dataclass(frozen=True, eq=False)
class PCPReplace:
    """Replace `module` by ``out_mean + sum_k scales_k v_k v_k^T (h - in_mean)`` (means optional)."""

    module: str
    directions: Float[torch.Tensor, "rank d_model"]
    scales: Float[torch.Tensor, " rank"]
    in_mean: Float[torch.Tensor, " d_model"] | None = None
    out_mean: Float[torch.Tensor, " d_model"] | None = None

    def __post_init__(self) -> None:
        if self.directions.ndim != 2 or self.scales.shape != self.directions.shape[:1]:
            raise ValueError(
                f"directions must be [rank, d_model] and scales [rank]; got {tuple(self.directions.shape)} "
                f"and {tuple(self.scales.shape)}"
            )
        for name in ("directions", "scales", "in_mean", "out_mean"):
            if getattr(self, name) is not None:
                check_finite(name, getattr(self, name))

    def matrix(self) -> Float[torch.Tensor, "d_model d_model"]:
        """The symmetric rank-r matrix ``A``."""
        return self.directions.T @ (self.scales[:, None] * self.directions)

    def hooks(self, model: HookedModel) -> list[Hook]:
        """A hook capturing the module's residual input and one replacing its output by ``A h``."""
        site = resolve_site(model, self.module)
        if site.resid_hook is None:
            raise ValueError(f"module={self.module!r} cannot be PCP-replaced; use an attn or mlp module")
        check_last_dim("directions", self.directions, model.cfg.d_model)
        captured: dict[str, torch.Tensor] = {}

        def capture(resid: torch.Tensor, hook: HookPoint) -> None:
            captured["resid"] = resid

        def replace(out: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            h = site.module_input(model, captured.pop("resid"))
            if self.in_mean is not None:
                h = h - self.in_mean.to(h)
            new = ((h @ self.directions.T.to(h)) * self.scales.to(h)) @ self.directions.to(h)
            return new + self.out_mean.to(h) if self.out_mean is not None else new

        return [(site.resid_hook, capture), (site.output_hook, replace)]

    def save(self, path: str | Path) -> None:
        """Save the fitted replacement (directions, scales, means) as safetensors to share or re-apply."""
        tensors = {k: getattr(self, k) for k in ("directions", "scales", "in_mean", "out_mean") if getattr(self, k) is not None}
        save_artifact(path, "pcp_replace", tensors, module=self.module)

    @classmethod
    def load(cls, path: str | Path) -> "PCPReplace":
        """A replacement saved by :meth:`save`."""
        tensors, metadata = load_artifact(path, "pcp_replace")
        return cls(module=metadata["module"], **tensors)


@dataclass(frozen=True, eq=False)
class PCPBasis:
    """PCA of a module's outputs with the means both PCP variants need; fit once, build many edits."""

    module: str
    components: Float[torch.Tensor, "n_components d_model"]
    explained_variance: Float[torch.Tensor, " n_components"]
    out_mean: Float[torch.Tensor, " d_model"]
    in_mean: Float[torch.Tensor, " d_model"]
    reference_coeffs: Float[torch.Tensor, " n_components"]

    @classmethod
    def fit(
        cls,
        module: str,
        inputs: Float[torch.Tensor, "sample d_model"],
        outputs: Float[torch.Tensor, "sample d_model"],
        n_components: int = 20,
        reference: Float[torch.Tensor, " d_model"] | None = None,
    ) -> "PCPBasis":
        """Fit PCA (exact SVD) on mean-centred `outputs`.

        `reference` fixes the coefficients ``c_k`` of the faithful variant (its projection on each
        component); by default ``c_k`` is one standard deviation along component k.
        """
        check_nonempty("outputs", outputs)
        if inputs.shape != outputs.shape or outputs.ndim != 2:
            raise ValueError(
                f"inputs and outputs must both be [sample, d_model]; got {tuple(inputs.shape)} and {tuple(outputs.shape)}"
            )
        check_finite("inputs", inputs)
        check_finite("outputs", outputs)
        d_model = outputs.shape[1]
        check_range("n_components", n_components, 1, min(d_model, len(outputs)))
        out_mean = outputs.double().mean(0)
        _, singular, vh = torch.linalg.svd(outputs.double() - out_mean, full_matrices=False)
        components = vh[:n_components]
        # Deterministic signs (as scikit-learn's svd_flip): the largest-magnitude entry is positive.
        signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
        components = components * signs
        variance = singular[:n_components] ** 2 / max(len(outputs) - 1, 1)
        if reference is None:
            coeffs = variance.sqrt()
        else:
            check_last_dim("reference", reference, d_model)
            coeffs = components @ (reference.double() - out_mean)
        return cls(
            module,
            components.float().contiguous(),
            variance.float(),
            out_mean.float(),
            inputs.double().mean(0).float(),
            coeffs.float(),
        )

    @property
    def n_components(self) -> int:
        """The number of principal components kept."""
        return self.components.shape[0]

    def directions(self, rank: int, variant: Variant = "faithful") -> Float[torch.Tensor, "rank d_model"]:
        """The unit directions ``v_1..v_rank`` of the chosen variant."""
        check_choice("variant", variant, VARIANTS)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= self.n_components:
            raise ValueError(
                f"rank={rank!r} is not valid; this basis has {self.n_components} fitted components, so rank must lie in "
                f"[1, {self.n_components}] (refit with more n_components, at most d_model={self.components.shape[1]})"
            )
        u = self.components[:rank]
        if variant == "centred":
            return u
        v = self.out_mean + self.reference_coeffs[:rank, None] * u
        return v / v.norm(dim=1, keepdim=True)

    def replacement(
        self,
        scales: Float[torch.Tensor, " rank"] | list[float],
        variant: Variant = "faithful",
    ) -> PCPReplace:
        """A PCPReplace of rank ``len(scales)``; negative scales flip a direction's sign."""
        scales = torch.as_tensor(scales, dtype=torch.float32)
        rank = scales.numel()
        directions = self.directions(rank, variant)
        if variant == "centred":
            return PCPReplace(self.module, directions, scales, self.in_mean, self.out_mean)
        return PCPReplace(self.module, directions, scales)

    def least_squares_scales(
        self,
        inputs: Float[torch.Tensor, "sample d_model"],
        outputs: Float[torch.Tensor, "sample d_model"],
        rank: int,
        variant: Variant = "faithful",
    ) -> Float[torch.Tensor, " rank"]:
        """The scales that make the replacement best match the module on (inputs, outputs) in
        squared error: a principled starting point for tuning."""
        v = self.directions(rank, variant).double()
        x, y = inputs.double(), outputs.double()
        if variant == "centred":
            x, y = x - self.in_mean.double(), y - self.out_mean.double()
        # Column k of the design is (v_k . h) v_k, flattened over samples and dimensions.
        design = torch.einsum("sk,kd->sdk", x @ v.T, v).reshape(-1, rank)
        solution = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution
        return solution.squeeze(1).float()

    def save(self, path: str | Path) -> None:
        """Save as safetensors (module name in the metadata)."""
        tensors = {k: getattr(self, k) for k in ("components", "explained_variance", "out_mean", "in_mean", "reference_coeffs")}
        save_artifact(path, "pcp_basis", tensors, module=self.module)

    @classmethod
    def load(cls, path: str | Path) -> "PCPBasis":
        """A basis saved by :meth:`save`."""
        tensors, metadata = load_artifact(path, "pcp_basis")
        return cls(module=metadata["module"], **tensors)
