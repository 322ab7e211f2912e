"""`make smollm`: Backdoor Attribution (BkdAttr) on SmolLM2-135M-Instruct, end to end. Run it with ``python -m backdoor_lens.experiments.smollm``."""
