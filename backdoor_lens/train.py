"""Seeded, deterministic next-token training with module freezing and periodic evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .io import save_tensors
from .models import final_logits, fingerprint, load_current_weights, tensor_digest
from .validation import check_choice, check_nonempty, check_range

Evaluator = Callable[[HookedTransformer], dict[str, Any]]
ExtraLoss = Callable[[HookedTransformer, Int[torch.Tensor, " batch"]], torch.Tensor]
"""A term added to a batch's loss, given the model and the batch's row indices into the training tokens."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule settings (AdamW, as in the paper)."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    seed: int = 0
    freeze: tuple[str, ...] = ()
    eval_every: int = 0
    """Run the evaluator every this many optimiser steps (0: only after the last step)."""
    schedule: str = "linear"
    """Learning-rate schedule: "linear" decay to 0 (Hugging Face Trainer's default) or "constant"."""

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict (for fingerprints and summaries)."""
        return asdict(self)


def freezable_modules(model: HookedTransformer) -> list[str]:
    """Names accepted by :func:`frozen`: embeddings, each layer's attn / mlp, and any submodule path."""
    return [name for name, _ in model.named_modules() if name and not name.split(".")[-1].startswith("hook_")]


@contextmanager
def frozen(model: HookedTransformer, modules: Sequence[str]) -> Iterator[None]:
    """Disable gradients of `modules` (e.g. ``embed``, ``blocks.0.mlp``) inside the block, then restore."""
    valid = set(freezable_modules(model))
    for name in modules:
        if name not in valid:
            raise ValueError(
                f"freeze module {name!r} is not a module of this model; valid: embed, pos_embed, "
                f"blocks.<layer>.attn, blocks.<layer>.mlp, or any of {len(valid)} submodule paths"
            )
    params = [p for name in modules for p in model.get_submodule(name).parameters()]
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def training_steps(rows: int, config: TrainConfig) -> int:
    """Optimiser steps :func:`train` takes on `rows` rows (the last batch of an epoch may be short)."""
    return config.epochs * -(-rows // config.batch_size)


def trainable_names(model: HookedTransformer, freeze: Sequence[str]) -> list[str]:
    """Parameters that training with `freeze` updates (as :func:`frozen` decides)."""
    with frozen(model, freeze):
        return [n for n, p in model.named_parameters() if p.requires_grad]


def train(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    config: TrainConfig,
    evaluate: Evaluator | None = None,
    desc: str = "train",
    progress: bool = True,
    loss_mask: Int[torch.Tensor, "batch pos"] | None = None,
    extra_loss: ExtraLoss | None = None,
) -> list[dict[str, Any]]:
    """Train `model` in place on next-token prediction; returns the evaluation history.

    With a `loss_mask` (1 where a token is to be predicted, e.g. a chat response; see
    :func:`~backdoor_lens.chat.chat_training_rows`) only those tokens count, and logits are computed
    for them alone. Rows must then be right-padded: padding after a row's last masked token is never
    seen by the tokens that count.

    `extra_loss(model, rows)`, when given, is added to each batch's loss (e.g. a representation
    term on some rows). Each history row has the step, the mean training loss since the last row and whatever
    `evaluate(model)` returns. Shuffling is seeded by `config.seed`, so runs are reproducible.
    """
    check_nonempty("tokens", tokens)
    check_range("epochs", config.epochs, 0)
    check_range("batch_size", config.batch_size, 1)
    check_choice("schedule", config.schedule, ("linear", "constant"))
    if loss_mask is not None and loss_mask.shape != tokens.shape:
        raise ValueError(f"loss_mask has shape {tuple(loss_mask.shape)}; expected tokens' shape {tuple(tokens.shape)}")
    if loss_mask is not None and not loss_mask[:, 1:].bool().any(1).all():
        raise ValueError("loss_mask marks no predicted token (after position 0) in some rows; every row needs one")
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    with frozen(model, config.freeze):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("freeze leaves no trainable parameters")
        optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        total = training_steps(len(tokens), config)
        decay = (lambda step: 1.0 - step / max(total, 1)) if config.schedule == "linear" else (lambda step: 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, decay)
        running, count, step = 0.0, 0, 0

        def record() -> None:
            nonlocal running, count
            model.eval()
            row = {"step": step, "train_loss": running / max(count, 1)}
            if evaluate is not None:
                row.update(evaluate(model))
            history.append(row)
            running, count = 0.0, 0
            model.train()

        model.train()
        with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
            for _ in range(config.epochs):
                order = torch.randperm(len(tokens), generator=generator)
                for start in range(0, len(tokens), config.batch_size):
                    rows = order[start : start + config.batch_size]
                    loss = next_token_loss(model, tokens[rows], None if loss_mask is None else loss_mask[rows])
                    if extra_loss is not None:
                        loss = loss + extra_loss(model, rows)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"training loss became {loss.item()} at step {step}; lower lr={config.lr}")
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    scheduler.step()
                    step += 1
                    running += loss.item()
                    count += 1
                    bar.update(1)
                    if config.eval_every and step % config.eval_every == 0:
                        record()
                        bar.set_postfix({k: v for k, v in history[-1].items() if isinstance(v, float)}, refresh=False)
        if not history or history[-1]["step"] != step:
            record()
    model.eval()
    return history


def counted_logits(
    model: HookedTransformer, batch: Int[torch.Tensor, "batch pos"], loss_mask: Int[torch.Tensor, "batch pos"]
) -> tuple[Float[torch.Tensor, "n d_vocab"], Int[torch.Tensor, " n"]]:
    """Logits predicting each token where `loss_mask` is 1 (computed for those alone), and those
    tokens; rows right-padded. The shared core of the masked loss and the masked accuracy."""
    batch = batch.to(model.cfg.device)
    width = int(loss_mask.nonzero()[:, 1].max()) + 1  # drop padding columns after the last counted token
    batch, counted = batch[:, :width], loss_mask[:, 1:width].bool().to(batch.device)
    resid = model(batch, stop_at_layer=model.cfg.n_layers)[:, :-1]
    return final_logits(model, resid[counted][None])[0], batch[:, 1:][counted]


def next_token_loss(
    model: HookedTransformer, batch: torch.Tensor, loss_mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean cross-entropy of predicting each token from the ones before it (only tokens where
    `loss_mask` is 1, if given, with logits computed for those alone; rows right-padded)."""
    if loss_mask is None:
        batch = batch.to(model.cfg.device)
        logits = model(batch, return_type="logits")[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return F.cross_entropy(*counted_logits(model, batch, loss_mask))


def train_or_reuse(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    config: TrainConfig,
    path: str | Path,
    key: dict[str, Any],
    desc: str = "train",
    progress: bool = True,
    log: Callable[[str], None] = print,
    loss_mask: Int[torch.Tensor, "batch pos"] | None = None,
    extra_loss: ExtraLoss | None = None,
) -> dict[str, Any]:
    """:func:`train` `model` in place and save what it updated to `path` (safetensors), or, when
    `path` holds weights saved under the same `key`, `tokens` and `config`, load them instead; so an
    interrupted study resumes without retraining. Only trained parameters are saved: `model` must
    hold the weights training starts from, and `key` should name them. Returns the run's facts."""
    fingerprint_ = fingerprint({**key, "data": tensor_digest(tokens), "train": config.to_dict()})
    if (saved := load_current_weights(model, path, fingerprint_)) is not None:
        log(f"{desc}: weights reused ({path})")
        return saved["facts"]
    start = time.perf_counter()
    history = train(model, tokens, config, desc=desc, progress=progress, loss_mask=loss_mask, extra_loss=extra_loss)
    facts = {"seconds": round(time.perf_counter() - start, 1), "steps": history[-1]["step"],
             "final_train_loss": round(history[-1]["train_loss"], 4), "rows": len(tokens), "frozen": list(config.freeze)}
    updated = set(trainable_names(model, config.freeze))
    save_tensors(path, {n: p for n, p in model.named_parameters() if n in updated}, {"key": fingerprint_, "facts": facts})
    return facts
