"""`make collapse`: Backdoor Collapse against the five BackdoorLLM attacks, beside same-budget baselines. Run it with ``python -m backdoor_lens.experiments.collapse``."""
