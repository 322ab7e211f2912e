"""The experiment scripts behind ``make toy``, ``make smollm`` and ``make gpt2m``, with their reports and figures."""
