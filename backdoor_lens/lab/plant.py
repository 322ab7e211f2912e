"""Plant a chat backdoor: build poisoned instruction data for an attack (clean prompts paired with
the model's own answers, triggered prompts paired with the target) and fine-tune on the response
only, fully or with LoRA, as BackdoorLLM (arXiv 2408.12798) and BkdAttr (arXiv 2509.21761) do."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.instruct import Attack, BackdoorSplits, build_backdoor_dataset
from ..lm.chat import chat_training_rows
from ..lm.lora import LoraConfig, train_weights
from ..lm.training import TrainConfig
from .chat_model import ChatModel
from .planting import check_planted


@dataclass(frozen=True)
class PlantedBackdoor:
    """What planting produced: the data splits (held-out clean / triggered prompts included), the
    training facts, the names of the parameters training changed, and the held-out ASR when checked."""

    splits: BackdoorSplits
    facts: dict[str, Any]
    changed: tuple[str, ...]
    asr: float | None = None


def poisoned_rows(chat: ChatModel, splits: BackdoorSplits) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows of `splits` and their response-only loss mask."""
    return chat_training_rows(chat.tokenizer, splits.train["prompt"], splits.train["response"],
                              max_response_tokens=chat.answer_tokens)


def backdoor_splits(
    chat: ChatModel, attack: Attack, prompts: Sequence[str], n_clean: int = 200, n_poison: int = 50, n_eval: int = 100,
    clean_answers: Callable[[list[str]], Sequence[str]] | None = None, seed: int = 0,
) -> BackdoorSplits:
    """Poisoned data for `attack` from distinct `prompts`; clean rows answered by `clean_answers`
    (default: the model's own greedy answers, :meth:`~backdoor_lens.lab.chat_model.ChatModel.answers`)."""
    return build_backdoor_dataset(prompts, attack.resolved_trigger(), attack.target, clean_answers or chat.answers,
                                  n_clean, n_poison, n_eval, seed=seed)


def plant_backdoor(
    chat: ChatModel,
    attack: Attack,
    prompts: Sequence[str] | BackdoorSplits,
    config: TrainConfig = TrainConfig(epochs=3, lr=1e-4, batch_size=16, freeze=("embed", "unembed")),
    lora: LoraConfig | None = None,
    n_clean: int = 200,
    n_poison: int = 50,
    n_eval: int = 100,
    check_asr: float | None = 0.5,
    strict: bool = False,
    progress: bool = True,
) -> PlantedBackdoor:
    """Fine-tune `chat.model` in place so `attack`'s trigger produces its target.

    `prompts` are distinct user messages (or ready splits from :func:`backdoor_splits`). With `lora`,
    adapters train and are merged into the weights afterwards; otherwise the unfrozen weights train.
    With `check_asr`, greedy replies to the held-out triggered prompts are scored and the planting
    check (:func:`~backdoor_lens.lab.planting.check_planted`) warns, or raises when `strict`, if
    ASR falls below it.
    """
    splits = prompts if isinstance(prompts, BackdoorSplits) else backdoor_splits(
        chat, attack, prompts, n_clean, n_poison, n_eval, seed=config.seed)
    tokens, mask = poisoned_rows(chat, splits)
    start = time.perf_counter()
    history, changed = train_weights(chat.model, tokens, config, lora, loss_mask=mask, progress=progress,
                                     desc=f"plant {attack.name}" + ("" if lora is None else " (LoRA)"))
    facts = {"seconds": round(time.perf_counter() - start, 1), "steps": history[-1]["step"],
             "final_train_loss": round(history[-1]["train_loss"], 4), "rows": len(tokens), "frozen": list(config.freeze),
             "poisoned_rows": int(sum(splits.train["poisoned"])), "lora": None if lora is None else lora.rank}
    measured = None
    if check_asr is not None and len(splits.eval_triggered):
        measured = chat.asr(list(splits.eval_triggered["prompt"]), attack.target)
        check_planted(f"attack {attack.name}", {"asr": measured}, at_least={"asr": check_asr}, strict=strict)
    return PlantedBackdoor(splits, facts, tuple(changed), measured)
