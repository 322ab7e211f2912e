"""The studies behind ``make toy``, ``make smollm``, ``make gpt2m`` and ``make collapse``: one package
each, built on the library and :mod:`.common` (an experiment never imports another experiment)."""
