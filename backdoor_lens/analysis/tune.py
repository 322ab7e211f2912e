"""Tune PCP scaling factors with Optuna (TPE), in a persistent study that resumes and can be shared.

The study lives in an Optuna storage: a database URL (``sqlite:///results/toy/optuna.db``,
``postgresql://...``) or a journal file path (``results/toy/optuna.journal``, the default of the toy
study: about 10x less overhead per trial than SQLite, and just as safe for several processes). A
rerun or a second worker process loads the same study and only runs the trials still missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna
import torch
from jaxtyping import Float

from ..util.validation import check_range

Objective = Callable[[Float[torch.Tensor, " rank"]], float]


@dataclass(frozen=True)
class TuneConfig:
    """Search space: scale_k = base_k * factor_k, factor_k in `factor_range`, optionally signed."""

    n_trials: int = 200
    factor_range: tuple[float, float] = (0.05, 2.0)
    search_signs: bool = False
    seed: int = 0


@dataclass(frozen=True)
class TuneResult:
    """The best scales found, their factors on the base scales, the objective's value there and the
    number of completed trials."""

    scales: Float[torch.Tensor, " rank"]
    factors: list[float]
    value: float
    n_trials: int


def match_objective(reference: Mapping[str, float]) -> Callable[[Mapping[str, float]], float]:
    """Squared deviation of every class's negativity from the unedited model's (reproduce it)."""
    return lambda scores: sum((scores[c] - reference[c]) ** 2 for c in reference) / len(reference)


def target_objective(
    reference: Mapping[str, float], trigger_classes: tuple[str, ...], target: float
) -> Callable[[Mapping[str, float]], float]:
    """Bring the trigger classes' negativity to `target` (0 = remove the backdoor) while keeping the
    other classes where the unedited model has them."""
    clean = [c for c in reference if c not in trigger_classes]

    def objective(scores: Mapping[str, float]) -> float:
        attack = sum((scores[c] - target) ** 2 for c in trigger_classes) / len(trigger_classes)
        keep = sum((scores[c] - reference[c]) ** 2 for c in clean) / max(len(clean), 1)
        return attack + keep

    return objective


def open_storage(storage: str | None) -> optuna.storages.BaseStorage | str | None:
    """A database URL as is, a file path as a journal-file storage, None as in-memory."""
    if storage is None or "://" in storage:
        return storage
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))


def tune_scales(
    objective: Objective,
    base_scales: Float[torch.Tensor, " rank"],
    config: TuneConfig,
    storage: str | None,
    study_name: str,
    progress: bool = True,
) -> TuneResult:
    """Minimise `objective(scales)` over per-component factors; returns the best scales found.

    Trials already in the stored study count towards `config.n_trials`, so an interrupted run
    resumes and several processes can work on one study.
    """
    low, high = config.factor_range
    check_range("factor_range[0]", low, 0.0, high)
    check_range("n_trials", config.n_trials, 1)
    rank = base_scales.numel()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=study_name,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
    )

    def factors_of(params: Mapping[str, float]) -> list[float]:
        return [
            params[f"factor_{k}"] * (-1.0 if config.search_signs and params.get(f"negate_{k}") else 1.0)
            for k in range(rank)
        ]

    def trial_objective(trial: optuna.Trial) -> float:
        for k in range(rank):
            trial.suggest_float(f"factor_{k}", low, high)
            if config.search_signs:
                trial.suggest_categorical(f"negate_{k}", [False, True])
        return objective(base_scales * torch.tensor(factors_of(trial.params)))

    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if done < config.n_trials:
        study.optimize(
            trial_objective,
            n_trials=config.n_trials - done,
            callbacks=[optuna.study.MaxTrialsCallback(config.n_trials, states=(optuna.trial.TrialState.COMPLETE,))],
            show_progress_bar=progress,
        )
    factors = factors_of(study.best_trial.params)
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    return TuneResult(base_scales * torch.tensor(factors), factors, float(study.best_value), complete)
