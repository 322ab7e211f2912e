"""Evidence that an unknown trigger's representations aggregate with the known ones (Backdoor
Collapse's premise): centroid distances, the alignment of the trigger directions, a probe trained on
known triggers and tested on the attacker's, and a shared 2-D projection for a figure.

Features are one layer's activations at the last prompt token (see
:func:`backdoor_lens.analysis.probe.probe_features`); the attacker's rows are used for evaluation only.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..util.validation import check_finite, check_nonempty


def _check(name: str, x: torch.Tensor, d: int | None) -> None:
    check_nonempty(name, x)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise ValueError(f"{name} has shape {tuple(x.shape)}; it must be (rows, d_model) like clean")
    check_finite(name, x)


def aggregation_evidence(
    clean: Float[torch.Tensor, "n d_model"],
    known: Float[torch.Tensor, "m d_model"],
    attacker: Float[torch.Tensor, "k d_model"],
    seed: int = 0,
) -> dict[str, float]:
    """How close the attacker-trigger representations sit to the known-trigger ones.

    - distances between the three centroids (in units of the clean rows' mean distance to their centroid);
    - cosine between the known and the attacker trigger directions (each centroid minus the clean one);
    - ``probe_transfer``: accuracy on clean vs attacker rows of a logistic probe fit on clean vs known rows
      (chance is the majority share; 1.0 means the attacker's rows read as "known trigger").
    """
    _check("clean", clean, None)
    _check("known", known, clean.shape[1])
    _check("attacker", attacker, clean.shape[1])
    c, k, a = (x.double().mean(0) for x in (clean, known, attacker))
    scale = float((clean.double() - c).norm(dim=1).mean()) or 1.0
    known_dir, attacker_dir = k - c, a - c
    cosine = float(torch.nn.functional.cosine_similarity(known_dir, attacker_dir, dim=0))
    half = len(clean) // 2
    if half < 2 or len(known) < 2:
        raise ValueError("aggregation_evidence needs at least 4 clean and 2 known rows (the probe trains on half the clean)")
    x_fit = torch.cat([clean[:half], known]).numpy()
    y_fit = np.r_[np.zeros(half), np.ones(len(known))]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x_fit, y_fit)
    x_test = torch.cat([clean[half:], attacker]).numpy()
    y_test = np.r_[np.zeros(len(clean) - half), np.ones(len(attacker))]
    return {
        "known_to_attacker": round(float((k - a).norm()) / scale, 4),
        "clean_to_attacker": round(float((c - a).norm()) / scale, 4),
        "clean_to_known": round(float((c - k).norm()) / scale, 4),
        "direction_cosine": round(cosine, 4),
        "probe_transfer": round(float(probe.score(x_test, y_test)), 4),
        "attacker_read_as_known": round(float(probe.predict(attacker.numpy()).mean()), 4),
    }


def shared_projection(
    groups: dict[str, Float[torch.Tensor, "rows d_model"]]
) -> dict[str, Float[np.ndarray, "rows 2"]]:
    """Every group projected on the top two principal components of all rows together (one basis, so
    "before" and "after" panels built from the same call are comparable)."""
    check_nonempty("groups", groups)
    stacked = torch.cat([g.double() for g in groups.values()])
    centred = stacked - stacked.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    coords = (centred @ vh[:2].T).numpy()
    out, start = {}, 0
    for name, g in groups.items():
        out[name] = coords[start : start + len(g)]
        start += len(g)
    return out
