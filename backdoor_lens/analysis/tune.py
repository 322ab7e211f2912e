"""Tune PCP scaling factors with Optuna (TPE), in a persistent study that resumes and can be shared.

The study lives in an Optuna storage: a journal file path (``results/toy/optuna.journal``, the toy
study's default: about 10x less overhead per trial than SQLite), or a database URL
(``sqlite:///results/toy/optuna.db``, ``postgresql://user:password@host/db``). A rerun or another
worker process loads the same study and only runs the trials still missing.

**Spreading tuning over machines.** Start the same study on several machines with one PostgreSQL
database as storage, e.g. ``python -m backdoor_lens.experiments.toy --storage
postgresql://user:password@dbhost/optuna --out results/toy-worker1`` (each worker its own ``--out``;
install the driver with ``pip install 'backdoor_lens[postgres]'``). Workers take distinct trials and
stop once the study has its trials; a worker that dies has its trial retried by another.

**Same answer after an interruption.** Every trial fills a *slot* (its index among the study's
trials, not counting those that died and were retried) and every parameter is drawn by TPE seeded from the study seed, the slot
and the parameter's name (:class:`SlotSeededTPE`). A study killed mid-trial and resumed retries that
slot with the same parameters and continues with the same draws, so it ends with exactly the trials,
and the best value, of an uninterrupted run (given a deterministic objective, e.g. at a fixed torch
thread count). Concurrent workers fill distinct slots and never run a parameter set twice; TPE then
learns from whichever trials finished first, so their best value is comparable to, not identical
with, one worker's.

**Stale trials.** With a database, workers send heartbeats every `heartbeat` seconds; a trial
without one for three heartbeats is failed and retried (``RetryHeartbeatStaleTrialCallback``, up to
3 times) by the next worker that looks. A journal file has no heartbeats: each trial records its
process (host, pid and start time), and a running trial whose process on this machine is gone is
failed and retried when a worker opens or polls the study, as is one that never recorded its process
(killed between creating the trial and claiming it) once :data:`UNCLAIMED_SECONDS` have passed. A
trial stopped by Ctrl-C is retried the same way when the study resumes. A journal cannot tell
whether a process on another machine lives, so share journals only between processes of one machine
and use a database across machines. A trial started after the study is full (two workers racing for
the last slot) fails as surplus and never counts. The journal file is locked with ``fcntl``
(released even by a killed process); a record cut short by a kill is dropped when the journal is
next opened, and a journal that is corrupt elsewhere is set aside (``*.corrupt-<time>``) and the
study starts afresh.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import torch
from jaxtyping import Float
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from ..util.io import set_aside
from ..util.validation import check_range

Objective = Callable[[Float[torch.Tensor, " rank"]], float]
MAX_RETRIES = 3
UNCLAIMED_SECONDS = 30.0
"""A running trial on a journal that has not recorded its process this long after it started is
stale: a live worker records it a moment after creating the trial, so only a kill in between leaves one."""
_WORKER, _SLOT, _ROUND, _SKIPPED, _OBJECTIVE_FAILED = "worker", "slot", "round", "skipped", "objective_failed"


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


def _retried(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a retry took over."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _released(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that gave up their slot: those retried (stale or interrupted) and
    those skipped (surplus, duplicate, or interrupted and awaiting their retry). A trial whose
    objective failed keeps its slot."""
    skipped = {t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(_SKIPPED)}
    return _retried(trials) | skipped


def _slot_done(trial: FrozenTrial) -> bool:
    """Whether a held trial settles its slot: complete, or failed in its objective (an error or a
    non-finite value), or stale with no retries left. A stale trial can show FAIL before its retry
    exists, so it alone does not settle the slot."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and (
        bool(trial.user_attrs.get(_OBJECTIVE_FAILED)) or len(trial.system_attrs.get("retry_history", [])) >= MAX_RETRIES)


def _duplicates(trials: Sequence[FrozenTrial]) -> int:
    """How many trials were skipped as duplicates (only ever in a race between workers)."""
    return sum(1 for t in trials if t.user_attrs.get(_SKIPPED) == "duplicate")


def _slot(trials: Sequence[FrozenTrial], number: int) -> int:
    """The slot of trial `number`: its index among the trials that hold one."""
    released = _released(trials)
    return number - sum(1 for n in released if n < number)


class SlotSeededTPE(optuna.samplers.BaseSampler):
    """Independent TPE whose every draw is seeded by the study seed, the trial's slot and the
    parameter's name, so a resumed study repeats an uninterrupted one's draws and concurrent
    workers draw differently. (Trials that failed as duplicates, possible only in a race between
    workers, also enter the seed, so the next draw differs.)"""

    def __init__(self, seed: int):
        self.seed = seed

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        """No joint search space: every parameter is drawn on its own."""
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        """Nothing is drawn jointly."""
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: optuna.distributions.BaseDistribution
    ) -> object:
        """One TPE draw, from a TPE sampler seeded by (seed, slot, duplicates so far, name); the slot
        is the one the trial was given when it started (a retry's is its original's)."""
        if _SLOT in trial.user_attrs:  # recorded by tune_scales when the trial started
            slot, duplicates = trial.user_attrs[_SLOT], trial.user_attrs.get(_ROUND, 0)
        else:
            trials = study.get_trials(deepcopy=False)
            slot, duplicates = _slot(trials, trial.number), _duplicates(trials)
        digest = hashlib.sha256(f"{self.seed}:{slot}:{duplicates}:{param_name}".encode()).digest()
        sampler = optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "little"))
        return sampler.sample_independent(study, trial, param_name, param_distribution)


class _Skipped(Exception):
    """A trial that is not run: surplus (the study is full) or a duplicate of another's parameters."""


class _FlockLock(optuna.storages.journal.JournalFileOpenLock):
    """An ``fcntl`` lock on ``<journal>.lock`` (in place of Optuna's lock files, which a killed
    worker leaves behind): released by the kernel when its holder dies."""

    def __init__(self, path: str):
        self.path = path + ".lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Block until the lock is held."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        """Release the lock."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _repair_journal(path: Path, lock: _FlockLock) -> None:
    """Drop a last record cut short by a kill; set aside a journal corrupt elsewhere (warning for both)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    lock.acquire()
    try:
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        try:
            for line in complete.splitlines():
                json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            moved = set_aside(path)
            warnings.warn(f"{path}: Optuna journal is corrupt ({err}); set aside as {moved.name}, the study starts "
                          "afresh", stacklevel=3)
            return
        if len(complete) < len(data):
            with open(path, "r+b") as f:
                f.truncate(len(complete))
            warnings.warn(f"{path}: Optuna journal ended in a record cut short by a kill; dropped its last "
                          f"{len(data) - len(complete)} bytes", stacklevel=3)
    finally:
        lock.release()


def open_storage(storage: str | None, heartbeat: int = 10) -> optuna.storages.BaseStorage | None:
    """A database URL as an RDB storage with heartbeats every `heartbeat` seconds (stale trials
    retried), a file path as a journal-file storage (repaired if a kill cut its last record short),
    None as in-memory."""
    if storage is None:
        return None
    if "://" in storage:
        engine = {"connect_args": {"connect_timeout": 10}} if storage.startswith("postgresql") else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                storage, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            )
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    lock = _FlockLock(storage)
    _repair_journal(Path(storage), lock)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage, lock_obj=lock))


def _started(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc; "" where unknown): with the
    pid, it names a process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _this_worker() -> str:
    return f"{socket.gethostname()}|{os.getpid()}|{_started(os.getpid())}"


def _dead_here(worker: str | None) -> bool:
    """True when `worker` ("host|pid|start") was a process on this machine that no longer runs."""
    host, _, rest = (worker or "").partition("|")
    pid, _, started = rest.partition("|")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return bool(started) and _started(int(pid)) != started


def _unclaimed(trial: FrozenTrial) -> bool:
    """True when running `trial` never recorded its worker and started :data:`UNCLAIMED_SECONDS` ago or more."""
    if _WORKER in trial.user_attrs or trial.datetime_start is None:
        return False
    started = trial.datetime_start
    return (datetime.now(started.tzinfo) - started).total_seconds() >= UNCLAIMED_SECONDS


def _fail_stale(study: optuna.Study, storage: optuna.storages.BaseStorage | None) -> None:
    """Fail and retry the stale running trials (by heartbeat on a database; on a journal, those
    whose process on this machine is gone), and retry the trials a KeyboardInterrupt stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        optuna.storages.fail_stale_trials(study)
        if isinstance(storage, optuna.storages.JournalStorage):
            study_id = storage.get_study_id_from_name(study.study_name)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if _dead_here(trial.user_attrs.get(_WORKER)) or _unclaimed(trial):
                    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                    try:
                        storage.set_trial_state_values(trial_id, TrialState.FAIL)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        continue
                    retry(study, storage.get_trial(trial_id))
        trials = study.get_trials(deepcopy=False)
        retried = _retried(trials)
        for trial in trials:
            if trial.state == TrialState.FAIL and trial.user_attrs.get(_SKIPPED) == "interrupted" and trial.number not in retried:
                retry(study, trial)


def tune_scales(
    objective: Objective,
    base_scales: Float[torch.Tensor, " rank"],
    config: TuneConfig,
    storage: str | None,
    study_name: str,
    progress: bool = True,
    heartbeat: int = 10,
    poll: float = 1.0,
) -> TuneResult:
    """Minimise `objective(scales)` over per-component factors; returns the best scales found.

    Trials already in the stored study count towards `config.n_trials`, so an interrupted run
    resumes (with the trials an uninterrupted run would have had, see the module docstring) and
    several processes can work on one study: each returns once the study has `config.n_trials`
    complete trials, waiting (polling every `poll` seconds) for other workers' last trials.
    """
    low, high = config.factor_range
    check_range("factor_range[0]", low, 0.0, high)
    check_range("n_trials", config.n_trials, 1, 10**6)
    rank = base_scales.numel()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opened = open_storage(storage, heartbeat)
    study = optuna.create_study(storage=opened, study_name=study_name, load_if_exists=True, direction="minimize",
                                sampler=SlotSeededTPE(config.seed))

    def factors_of(params: Mapping[str, float]) -> list[float]:
        return [
            params[f"factor_{k}"] * (-1.0 if config.search_signs and params.get(f"negate_{k}") else 1.0)
            for k in range(rank)
        ]

    def run_trial(trial: optuna.Trial) -> float:
        trials = study.get_trials(deepcopy=False)
        slot = trial.user_attrs.get(_SLOT)  # a retry keeps the slot of the trial it retries
        if slot is None:
            slot = _slot(trials, trial.number)
        if duplicates := _duplicates(trials):
            trial.set_user_attr(_ROUND, duplicates)
        if slot >= config.n_trials:
            trial.set_user_attr(_SKIPPED, "surplus")
            raise _Skipped("surplus")
        trial.set_user_attr(_SLOT, slot)
        for k in range(rank):
            trial.suggest_float(f"factor_{k}", low, high)
            if config.search_signs:
                trial.suggest_categorical(f"negate_{k}", [False, True])
        live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        if any(t.number != trial.number and t.params == trial.params for t in study.get_trials(deepcopy=False, states=live)):
            trial.set_user_attr(_SKIPPED, "duplicate")
            raise _Skipped("duplicate")
        return objective(base_scales * torch.tensor(factors_of(trial.params)))

    def trial_objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(_WORKER, _this_worker())
        if trial.user_attrs.get(_SKIPPED):  # a retry: not skipped itself
            trial.set_user_attr(_SKIPPED, None)
        try:
            value = run_trial(trial)
        except KeyboardInterrupt:
            trial.set_user_attr(_SKIPPED, "interrupted")  # retried when the study resumes
            raise
        except _Skipped:
            raise
        except Exception:
            trial.set_user_attr(_OBJECTIVE_FAILED, True)
            raise
        if not math.isfinite(value):
            trial.set_user_attr(_OBJECTIVE_FAILED, True)
        return value

    with tqdm(total=config.n_trials, desc=study_name[:40], disable=not progress, leave=False) as bar:
        while True:
            _fail_stale(study, opened)
            trials = study.get_trials(deepcopy=False)
            released = _released(trials)
            held = [t for t in trials if t.number not in released]
            done = sum(_slot_done(t) for t in held)
            bar.update(min(done, config.n_trials) - bar.n)
            if done >= config.n_trials:
                break
            waiting = any(t.state == TrialState.WAITING for t in held)
            if len(held) >= config.n_trials and not waiting:
                time.sleep(poll)  # other workers hold the last trials
                continue
            study.optimize(trial_objective, n_trials=1, catch=(_Skipped,))
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if math.isfinite(t.value)]
    if not complete:
        raise RuntimeError(f"study {study_name!r}: no trial completed with a finite objective value")
    best = min(complete, key=lambda t: (t.value, t.user_attrs.get(_SLOT, t.number), t.number))
    factors = factors_of(best.params)
    return TuneResult(base_scales * torch.tensor(factors), factors, float(best.value), len(complete))
