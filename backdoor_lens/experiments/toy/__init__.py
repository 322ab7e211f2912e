"""`make toy`: the toy-model study of Lamparth & Reuel, end to end. Run it with ``python -m backdoor_lens.experiments.toy``."""
