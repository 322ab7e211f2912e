"""Localising a backdoor: logit lens, causal patching, probes, BAHA head attribution, PCP tuning."""
