"""Running a model: token rows and padding, activation collection, generation with a key/value cache,
the next-token loss, chat templates, training with frozen modules, and LoRA adapters."""

from .chat import (
    chat_prompt,
    chat_replies,
    chat_training_rows,
    decode,
    encode_prompts,
    prompt_rows,
)
from .collect import (
    collect_activations,
    load_means,
    module_io,
    module_means,
    module_outputs,
    save_means,
)
from .decoding import Decoder, GreedyDecoder, SamplingDecoder
from .generation import Sampling, generate, sample
from .logits import final_logits, next_token_logits
from .lora import LoraConfig, lora_adapters, train_weights
from .loss import (
    TokenStats,
    counted_logits,
    masked_loss,
    next_token_loss,
    token_nll,
    token_stats,
    validation_loss,
)
from .rows import TargetBatch, batches, check_tokens, left_pad, right_pad
from .training import (
    Freeze,
    TrainConfig,
    freezable_modules,
    train,
    trainable_names,
    training_steps,
)

__all__ = [
    "chat_prompt", "chat_replies", "chat_training_rows", "decode", "encode_prompts", "prompt_rows",
    "collect_activations", "load_means", "module_io", "module_means", "module_outputs", "save_means",
    "Sampling", "generate", "sample", "Decoder", "GreedyDecoder", "SamplingDecoder", "final_logits", "next_token_logits",
    "LoraConfig", "lora_adapters", "train_weights",
    "TokenStats", "counted_logits", "masked_loss", "next_token_loss", "token_nll", "token_stats", "validation_loss",
    "TargetBatch", "batches", "check_tokens", "left_pad", "right_pad",
    "Freeze", "TrainConfig", "freezable_modules", "train", "trainable_names", "training_steps",
]
