"""Seeded, deterministic next-token training with module freezing and periodic evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from ..models.protocol import HookedModel
from ..util.validation import check_choice, check_names, check_nonempty, check_range
from .loss import next_token_loss

Evaluator = Callable[[HookedModel], dict[str, Any]]
ExtraLoss = Callable[[HookedModel, Int[torch.Tensor, " batch"]], torch.Tensor]
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

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0)
        check_range("lr", self.lr, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("seed", self.seed, 0)
        check_range("eval_every", self.eval_every, 0)
        check_names("freeze", self.freeze)
        check_choice("schedule", self.schedule, ("linear", "constant"))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict (for fingerprints and summaries)."""
        return asdict(self)


COMPONENTS = ("embed", "pos_embed", "ln_final", "unembed")
"""Whole-model components :class:`Freeze` names, beside each layer's ``attn``, ``mlp``, ``ln1``, ``ln2``."""


def freezable_modules(model: HookedModel) -> list[str]:
    """Names :class:`Freeze` accepts: the TransformerLens component names (``embed``, ``pos_embed``,
    ``blocks.<layer>.attn`` / ``mlp`` / ``ln1`` / ``ln2``, ``ln_final``, ``unembed``, those the model
    has) and any submodule path. A TransformerBridge resolves the component names to the HF modules
    it wraps (which ``named_modules`` lists under their HF paths)."""
    names = [name for name, _ in model.named_modules() if name and not name.split(".")[-1].startswith("hook_")]
    layers = [f"blocks.{l}.{kind}" for l in range(model.cfg.n_layers) for kind in ("attn", "mlp", "ln1", "ln2")]
    known = set(names)
    return names + [name for name in (*COMPONENTS, *layers) if name not in known and _has_submodule(model, name)]


def _has_submodule(model: HookedModel, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


@dataclass(frozen=True)
class Freeze:
    """Disable gradients of `modules` (e.g. ``embed``, ``blocks.0.mlp``) while applied, then restore
    them: a weight edit for :func:`~backdoor_lens.hooks.core.apply`, and what training's ``freeze`` uses.

    Names are those of :func:`freezable_modules`, the same on both backends. On a TransformerBridge
    over a model with tied embeddings (SmolLM2's), ``embed`` and ``unembed`` share one weight, so
    freezing either freezes both; a HookedTransformer holds them as two copies."""

    modules: tuple[str, ...]

    def __post_init__(self) -> None:
        check_names("modules", self.modules)

    @contextmanager
    def applied(self, model: HookedModel) -> Iterator[HookedModel]:
        """`model` with the modules' parameters frozen inside the block."""
        valid = set(freezable_modules(model))
        for name in self.modules:
            if name not in valid:
                raise ValueError(
                    f"freeze module {name!r} is not a module of this model; valid: embed, pos_embed, "
                    f"blocks.<layer>.attn, blocks.<layer>.mlp, or any of {len(valid)} submodule paths"
                )
        params = [p for name in self.modules for p in model.get_submodule(name).parameters()]
        before = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in zip(params, before):
                p.requires_grad_(flag)


def training_steps(rows: int, config: TrainConfig) -> int:
    """Optimiser steps :func:`train` takes on `rows` rows (the last batch of an epoch may be short)."""
    return config.epochs * -(-rows // config.batch_size)


def _adamw(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `params`, with the fused kernel where their devices have one: on a model whose
    embeddings dominate its size (a chat vocabulary), it is several times faster than the default."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def trainable_names(model: HookedModel, freeze: Sequence[str]) -> list[str]:
    """Parameters that training with `freeze` updates (as :class:`Freeze` decides)."""
    with Freeze(tuple(freeze)).applied(model):
        return [n for n, p in model.named_parameters() if p.requires_grad]


@contextmanager
def _undone_on_error(params: list[torch.nn.Parameter], backup: list[torch.Tensor]) -> Iterator[None]:
    """Copy `params` into `backup` on entry and back if the block raises: a failing optimiser step
    leaves the weights it started from."""
    with torch.no_grad():
        for saved, param in zip(backup, params):
            saved.copy_(param)
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for saved, param in zip(backup, params):
                param.copy_(saved)
        raise


def _backward(loss: torch.Tensor, step: int, config: TrainConfig) -> torch.Tensor:
    """Accumulate `loss`'s gradients (its graph is freed; a constant, e.g. an extra term with no rows
    to act on, has none) and return its value; a non-finite loss raises."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()} at step {step}; lower lr={config.lr}")
    if loss.requires_grad:
        loss.backward()
    return loss.detach()


def train(
    model: HookedModel,
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
    :func:`~backdoor_lens.lm.chat.chat_training_rows`) only those tokens count, and logits are computed
    for them alone. Rows must then be right-padded: padding after a row's last masked token is never
    seen by the tokens that count.

    `extra_loss(model, rows)`, when given, is added to each batch's loss (e.g. a representation
    term on some rows); it is computed after the batch loss's backward pass, so the two graphs are
    never held at once (BEEAR's and CROW's extra passes are each as large as the batch loss's).
    Each history row has the step, the mean training loss since the last row and whatever
    `evaluate(model)` returns. Shuffling is seeded by `config.seed`, so runs are reproducible.

    When training raises (a non-finite loss or weights: FloatingPointError; or any other error),
    the model is left in the mode it came in and with the weights from before the failing step (a
    copy of the trainable weights is kept for this, so training holds them twice).
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
    with Freeze(tuple(config.freeze)).applied(model):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("freeze leaves no trainable parameters")
        optimiser = _adamw(params, config)
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

        was_training = model.training
        backup = [torch.empty_like(p) for p in params]
        model.train()
        try:
            with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
                for _ in range(config.epochs):
                    order = torch.randperm(len(tokens), generator=generator)
                    for start in range(0, len(tokens), config.batch_size):
                        rows = order[start : start + config.batch_size]
                        with _undone_on_error(params, backup):
                            optimiser.zero_grad(set_to_none=True)
                            loss = _backward(next_token_loss(model, tokens[rows], None if loss_mask is None else loss_mask[rows]),
                                             step, config)
                            if extra_loss is not None:  # after the first backward, so one graph is held at a time
                                loss = loss + _backward(extra_loss(model, rows), step, config)
                            optimiser.step()
                            if not all(bool(torch.isfinite(p).all()) for p in params):
                                raise FloatingPointError(f"weights became non-finite at step {step}; lower lr={config.lr}")
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
        except BaseException:
            model.train(was_training)
            raise
    model.eval()
    return history
