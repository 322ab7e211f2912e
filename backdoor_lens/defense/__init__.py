"""Removing a backdoor without its trigger: Backdoor Collapse (known-trigger injection, then
recovery) and the evidence that an unknown trigger aggregates with the known ones."""

from .aggregation import aggregation_evidence, shared_projection
from .backdoor_collapse import CollapseConfig, collapse, inject_known, recover

__all__ = ["aggregation_evidence", "shared_projection", "CollapseConfig", "collapse", "inject_known", "recover"]
