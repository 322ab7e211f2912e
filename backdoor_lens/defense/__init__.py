"""Removing a backdoor: Backdoor Collapse (known-trigger injection, then recovery) and the evidence
that an unknown trigger aggregates with the known ones."""
