"""`make gpt2m`: Lamparth & Reuel's GPT-2 Medium study, end to end. Run it with ``python -m backdoor_lens.experiments.gpt2m``."""
