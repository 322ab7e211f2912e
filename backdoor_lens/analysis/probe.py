"""Backdoor Probe (BkdAttr): per-layer classifiers that read "triggered or not" from the residual stream.

Features are one hook per layer (by default the residual stream entering attention) at one position
per row (by default the last prompt token). Per layer, a standardised logistic regression and the
paper's small MLP probe are fit on a seeded, stratified split and scored on the held-out part; a
cross-layer transfer matrix shows whether the layers share one backdoor direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..hooks.positions import PerRow, Positions, as_positions, select, split_rows
from ..lm.rows import batches, check_tokens
from ..models.protocol import HookedModel
from ..util.validation import check_finite, check_nonempty, check_range

RESID_PRE = "blocks.{layer}.hook_resid_pre"
LN1_NORMALIZED = "blocks.{layer}.ln1.hook_normalized"
PROBE_HOOKS = (RESID_PRE, LN1_NORMALIZED)


def hook_names(model: HookedModel, hook: str, layers: Sequence[int]) -> list[str]:
    """`hook` formatted for each layer; fails unless every name is a hook point of `model`."""
    names = [hook.format(layer=layer) for layer in layers] if "{layer}" in hook else []
    if not names or any(n not in model.hook_dict for n in names):
        raise ValueError(
            f"hook={hook!r} is not a per-layer hook template of this model; use one with '{{layer}}', "
            f"e.g. {', '.join(repr(h) for h in PROBE_HOOKS)}"
        )
    return names


def last_token_positions(attention_mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, " batch"]:
    """Index of each row's last real token in a right-padded batch (mask 1 on tokens, 0 on padding)."""
    lengths = attention_mask.sum(-1)
    if (lengths == 0).any():
        raise ValueError("attention_mask has rows without tokens; every row needs at least one")
    return lengths - 1


@torch.no_grad()
def probe_features(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    positions: Positions | Int[torch.Tensor, " batch"] = -1,
    hook: str = RESID_PRE,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
) -> Float[torch.Tensor, "layer batch d_model"]:
    """Activations of `hook` at each layer, at one position per row: an int for every row (the last
    column by default) or one per row (each row's last real token when rows are right-padded).

    All layers come from one forward pass per batch that stops after the last layer needed. Rows may
    be right-padded: causal attention keeps the padding from reaching earlier positions.
    """
    check_tokens(model, tokens)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = hook_names(model, hook, layers)
    positions = as_positions(positions)
    if not isinstance(positions, (int, PerRow)):
        raise ValueError(f"positions={positions!r} must give one position per row: an int, or a 1-D tensor / PerRow")
    wanted = set(names)
    parts: list[torch.Tensor] = []
    for rows, pos in zip(batches(tokens, batch_size), split_rows(positions, len(tokens), batch_size)):
        _, cache = model.run_with_cache(rows, names_filter=lambda n: n in wanted, stop_at_layer=max(layers) + 1)
        parts.append(torch.stack([select(cache[n], pos, n).cpu() for n in names]))
    return torch.cat(parts, dim=1).float()


@dataclass(frozen=True)
class ProbeResult:
    """Held-out accuracy per layer for each probe kind, and the logistic transfer matrix."""

    layers: tuple[int, ...]
    logistic: dict[int, float]
    mlp: dict[int, float]
    transfer: Float[np.ndarray, "train_layer test_layer"]
    """transfer[i, j]: accuracy on layer layers[j]'s held-out features of the probe fit on layers[i]."""
    n_train: int
    n_test: int

    def to_dict(self) -> dict:
        """A JSON-able dict of the result (the transfer matrix as nested lists)."""
        return {
            "layers": list(self.layers),
            "logistic": self.logistic,
            "mlp": self.mlp,
            "transfer": self.transfer.tolist(),
            "n_train": self.n_train,
            "n_test": self.n_test,
        }


def _check_probe_data(features: torch.Tensor, labels: torch.Tensor) -> None:
    check_nonempty("features", features)
    check_nonempty("labels", labels)
    if features.ndim != 3:
        raise ValueError(f"features has shape {tuple(features.shape)}; it must be (layer, batch, d)")
    if features.shape[1] != len(labels):
        raise ValueError(f"features has {features.shape[1]} rows but labels has {len(labels)}; they must match")
    check_finite("features", features)
    values = set(labels.tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0 (clean) or 1 (triggered); got {sorted(values)}")
    counts = torch.bincount(labels.long(), minlength=2)
    if counts.min() < 2:
        raise ValueError(f"labels need at least 2 clean (0) and 2 triggered (1) rows; got {counts.tolist()}")


def _logistic(x: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x, y)


def _mlp_accuracy(
    x_train: Float[torch.Tensor, "train d"],
    y_train: Int[torch.Tensor, " train"],
    x_test: Float[torch.Tensor, "test d"],
    y_test: Int[torch.Tensor, " test"],
    epochs: int,
    seed: int,
    batch_size: int = 32,
) -> float:
    """The paper's MLP probe (d -> 100 -> 1, ReLU, dropout 0.2, BCE, Adam 1e-3) on standardised
    features (residual norms differ by orders of magnitude across layers), seeded without touching
    the global RNG."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.nn.Sequential(
            torch.nn.Linear(x_train.shape[1], 100), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(100, 1)
        )
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        order = torch.Generator().manual_seed(seed)
        probe.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x_train), generator=order).split(batch_size):
                optimizer.zero_grad()
                loss_fn(probe(x_train[idx])[:, 0], y_train[idx].float()).backward()
                optimizer.step()
        probe.eval()
        with torch.no_grad():
            predicted = probe(x_test)[:, 0] > 0
    return float((predicted == y_test.bool()).float().mean())


def fit_probes(
    features: Float[torch.Tensor, "layer batch d"],
    labels: Int[torch.Tensor, " batch"],
    layers: Sequence[int] | None = None,
    test_fraction: float = 0.3,
    mlp_epochs: int = 50,
    seed: int = 0,
) -> ProbeResult:
    """Fit and score both probe kinds per layer on one seeded, stratified train/test split.

    `layers` names the rows of `features` (0, 1, ... when None), e.g. those given to probe_features.
    """
    _check_probe_data(features, labels)
    check_range("test_fraction", test_fraction, 0.0, 1.0)
    layers = tuple(range(len(features))) if layers is None else tuple(layers)
    if len(layers) != len(features):
        raise ValueError(f"layers has {len(layers)} entries but features has {len(features)} layers; they must match")
    y = labels.long().cpu()
    try:
        train, test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y.numpy())
    except ValueError as err:
        raise ValueError(f"test_fraction={test_fraction} leaves a split without both classes ({err})") from err
    x = features.detach().float().cpu()
    xs = x.numpy()
    probes = [_logistic(xs[k, train], y[train].numpy(), seed) for k in range(len(layers))]
    transfer = np.array([[probe.score(xs[j, test], y[test].numpy()) for j in range(len(layers))] for probe in probes])
    mlp = {
        layer: _mlp_accuracy(x[k, train], y[train], x[k, test], y[test], mlp_epochs, seed)
        for k, layer in enumerate(layers)
    }
    return ProbeResult(
        layers=layers,
        logistic={layer: float(transfer[k, k]) for k, layer in enumerate(layers)},
        mlp=mlp,
        transfer=transfer,
        n_train=len(train),
        n_test=len(test),
    )


def backdoor_probe(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    labels: Int[torch.Tensor, " batch"],
    positions: Positions | Int[torch.Tensor, " batch"] = -1,
    hook: str = RESID_PRE,
    layers: Sequence[int] | None = None,
    **fit_kwargs,
) -> ProbeResult:
    """Collect probe features of `tokens` (label 0 clean, 1 triggered) and fit the probes on them."""
    if len(tokens) != len(labels):
        raise ValueError(f"tokens has {len(tokens)} rows but labels has {len(labels)}; they must match")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    features = probe_features(model, tokens, positions, hook, layers)
    return fit_probes(features, labels, layers, **fit_kwargs)
