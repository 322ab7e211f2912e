"""One loader for the chat models the studies analyse, on the backend they are asked to use.

A chat study names its model (``"toy"``, the packaged ``"smollm2-135m-instruct"``, a local HF
directory or a hub name) and a backend (``"hooked"`` or ``"bridge"``); :func:`load_chat_model` hands
back the model and the tokenizer whose ids it reads, so the study's code is the same for both.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import PreTrainedTokenizerBase

from .chat_toy import chat_toy_model
from .pretrained import load_packaged_tokenizer, load_pretrained
from .protocol import HookedModel, check_backend

CHAT_TOY = "toy"
"""The name that selects :func:`~backdoor_lens.models.chat_toy.chat_toy_model`."""
TOY_TOKENIZER = "smollm2-135m-instruct"
"""The packaged model whose tokenizer (and chat template) the toy chat model reads."""


def load_chat_model(
    name: str | os.PathLike[str], backend: str = "hooked", seed: int = 0, **load_kwargs: Any
) -> tuple[HookedModel, PreTrainedTokenizerBase]:
    """The chat model `name` on `backend` and its tokenizer: the toy chat model (:data:`CHAT_TOY`,
    random weights drawn from `seed`, over SmolLM2's tokenizer), or
    :func:`~backdoor_lens.models.pretrained.load_pretrained` of `name` with `load_kwargs` (e.g.
    ``adapter``, ``device_map``, ``max_memory``)."""
    check_backend(backend)
    if str(name) == CHAT_TOY:
        if load_kwargs:
            raise ValueError(f"{', '.join(load_kwargs)} apply to pretrained models, not to the toy chat model {CHAT_TOY!r}")
        tokenizer = load_packaged_tokenizer(TOY_TOKENIZER)
        return chat_toy_model(tokenizer, seed, backend=backend), tokenizer
    return load_pretrained(name, backend=backend, **load_kwargs)
