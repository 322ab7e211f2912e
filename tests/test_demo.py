"""The demo toy behind the docs' recipes: a real backdoor, trained once, handed out as fresh copies."""

from __future__ import annotations

import torch

from backdoor_lens.eval.negativity import negativity_by_class
from backdoor_lens.lab.sentiment_toy import (
    backdoored_sentiment_toy,
    benign_sentiment_toy,
)


def test_poisoning_plants_the_trigger_and_copies_are_independent():
    model, data = backdoored_sentiment_toy()
    benign, _ = benign_sentiment_toy()
    negative = data.token_ids("negative")
    after = negativity_by_class(model, data.eval_tokens, negative)
    before = negativity_by_class(benign, data.eval_tokens, negative)
    assert before["p+t"] < 0.2 and after["p+t"] > 0.8 and after["p+p"] < 0.2

    with torch.no_grad():
        model.W_U.zero_()
    again, _ = backdoored_sentiment_toy()
    assert again.W_U.abs().sum() > 0 and again is not model
