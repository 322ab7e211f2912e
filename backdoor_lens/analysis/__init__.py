"""Localising a backdoor: logit lens, causal patching, backdoor probes, BAHA head attribution and
the backdoor vector, and Optuna tuning of PCP replacements."""

from .baha import backdoor_vector, baha_scores, head_means, head_z_means, n_heads_for, top_heads
from .lens import component_outputs, logit_lens, unembed
from .patching import negativity_patching, patching_effects
from .probe import LN1_NORMALIZED, RESID_PRE, ProbeResult, backdoor_probe, fit_probes, probe_features
from .scoring import target_score
from .tune import TuneConfig, TuneResult, match_objective, target_objective, tune_scales

__all__ = [
    "backdoor_vector", "baha_scores", "head_means", "head_z_means", "n_heads_for", "top_heads",
    "component_outputs", "logit_lens", "unembed", "negativity_patching", "patching_effects",
    "LN1_NORMALIZED", "RESID_PRE", "ProbeResult", "backdoor_probe", "fit_probes", "probe_features", "target_score",
    "TuneConfig", "TuneResult", "match_objective", "target_objective", "tune_scales",
]
