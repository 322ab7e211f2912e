"""Backdoor Collapse (:mod:`~backdoor_lens.defense.backdoor_collapse`) in the common
:class:`~backdoor_lens.defense.base.Defense` shape, so it runs in the same grid as the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from ..lm.training import TrainConfig, training_steps
from ..models.protocol import HookedModel
from .backdoor_collapse import CollapseConfig, collapse
from .base import Budget, DefendedModel, check_pairs


def stage_config(rows: int, steps: int, budget: Budget) -> TrainConfig:
    """A training config with the budget's optimiser settings and as many whole epochs over `rows`
    rows as come closest to `steps` steps (at least one)."""
    per_epoch = -(-rows // budget.batch_size)
    return TrainConfig(epochs=max(1, round(steps / per_epoch)), lr=budget.lr, batch_size=budget.batch_size,
                       seed=budget.seed, freeze=budget.freeze)


@dataclass(frozen=True)
class BackdoorCollapse:
    """Both Collapse stages in place, with `config`'s known triggers, target and aggregation loss;
    the budget's steps are split evenly between the stages, rounded to whole epochs (stage 1 trains
    on one row per prompt, stage 2 on two), and its optimiser settings replace the config's."""

    config: CollapseConfig = CollapseConfig()

    @property
    def name(self) -> str:
        """``backdoor-collapse``."""
        return "backdoor-collapse"

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """Run :func:`~backdoor_lens.defense.backdoor_collapse.collapse`; the facts hold each stage's
        history and the steps actually taken."""
        check_pairs(prompts, answers)
        inject = stage_config(len(prompts), budget.steps // 2, budget)
        recover = stage_config(2 * len(prompts), budget.steps - budget.steps // 2, budget)
        config = replace(self.config, inject=inject, recover=recover, max_answer_tokens=budget.answer_tokens)
        history = collapse(model, tokenizer, prompts, answers, config, progress=False)
        steps = training_steps(len(prompts), inject) + training_steps(2 * len(prompts), recover)
        return DefendedModel(model, facts={"steps": steps, "history": history})
