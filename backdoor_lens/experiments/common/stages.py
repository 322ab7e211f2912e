"""Resumable study stages, the one reuse-if-unchanged mechanism of the studies.

Every result a study saves (a stage's JSON, trained weights, a whole model, a growing table of
answers) is stored under ``folder`` with a key: a fingerprint of everything that determines it. A
rerun reuses a result whose key matches and recomputes one whose key changed, so an interrupted or
repeated study picks up where it stopped, and a changed setting never reads a stale result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from jaxtyping import Int
from transformer_lens import HookedTransformer

from ...lm.train import ExtraLoss, TrainConfig, train, trainable_names
from ...models.storage import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model
from ...util.fingerprint import fingerprint, tensor_digest
from ...util.io import load_tensors, read_json, save_tensors, write_json

T = TypeVar("T")


class Stages:
    """Keyed results in `folder`, recomputed only when their key changes; `log` reports reuse."""

    def __init__(self, folder: str | Path, log: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.log = log
        self.skipped: list[str] = []
        self.ran: list[str] = []

    def _reused(self, name: str, path: Path) -> None:
        self.skipped.append(name)
        self.log(f"{name}: done before, reused ({path})")

    def run(self, name: str, inputs: Any, compute: Callable[[], T]) -> T:
        """`compute()`'s JSON-able result, reused from ``<name>.json`` when `inputs` (any JSON-able
        value that determines the result) match the saved run's; saved atomically once computed. The
        value returned is always the one read back from disk, so a fresh and a resumed run see the same."""
        path = self.folder / f"{name}.json"
        key = fingerprint(inputs)
        if path.exists():
            saved = read_json(path)
            if saved.get("key") == key:
                self._reused(name, path)
                return saved["result"]
        write_json(path, {"key": key, "result": compute()})
        self.ran.append(name)
        return read_json(path)["result"]

    def weights(
        self, name: str, inputs: Any, model: HookedTransformer, compute: Callable[[], tuple[dict[str, Any], Sequence[str]]]
    ) -> dict[str, Any]:
        """Weights that `compute()` trains into `model` in place, kept in ``<name>.safetensors``.

        `compute` returns the run's facts (JSON-able) and the names of the parameters it changed;
        only those are saved. When the file holds weights saved under the same `inputs`, they are
        loaded into `model` instead (which must hold the weights training starts from) and the saved
        facts are returned."""
        path = self.folder / f"{name}.safetensors"
        key = fingerprint(inputs)
        if path.exists():
            saved, metadata = load_tensors(path)
            if metadata.get("key") == key:
                model.load_state_dict(saved, strict=False)
                self._reused(name, path)
                return metadata["facts"]
        facts, changed = compute()
        params = dict(model.named_parameters())
        save_tensors(path, {n: params[n] for n in changed}, {"key": key, "facts": facts})
        self.ran.append(name)
        return facts

    def model(
        self, name: str, inputs: Any, compute: Callable[[], tuple[HookedTransformer, dict[str, Any]]]
    ) -> tuple[HookedTransformer, dict[str, Any]]:
        """A whole model that `compute()` builds and trains, kept as a folder ``<name>/`` that
        :func:`~backdoor_lens.models.storage.load_model` reads (config and safetensors), with the
        run's facts; reused when saved under the same `inputs`."""
        path = self.folder / name
        key = fingerprint(inputs)
        if (path / WEIGHTS_FILE).exists() and (path / CONFIG_FILE).exists():
            model, metadata = load_model(path)
            if metadata.get("key") == key:
                self._reused(name, path)
                return model, metadata["facts"]
        model, facts = compute()
        save_model(model, path, {"key": key, "facts": facts})
        self.ran.append(name)
        return model, facts

    def table(self, name: str, inputs: Any) -> "Table":
        """A JSON table (``<name>.json``) that grows as rows are computed and is saved as it grows,
        valid for `inputs` (a stale one starts empty)."""
        return Table(self.folder / f"{name}.json", fingerprint(inputs))


class Table:
    """Keys to JSON-able values, saved after every :meth:`fill` so an interrupted run loses nothing."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        saved = read_json(path) if path.exists() else {}
        self.rows: dict[str, Any] = saved.get("rows", {}) if saved.get("key") == key else {}

    def fill(self, keys: Sequence[str], compute: Callable[[list[str]], Sequence[Any]], chunk: int,
             log: Callable[[str], None] = print, what: str = "rows") -> list[Any]:
        """The values of `keys`: missing ones computed `chunk` at a time by `compute(missing_keys)`
        and saved after each chunk."""
        missing = [k for k in dict.fromkeys(keys) if k not in self.rows]
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            log(f"{what} {start + len(part)}/{len(missing)}")
            self.rows.update(zip(part, compute(part)))
            write_json(self.path, {"key": self.key, "rows": self.rows})
        return [self.rows[k] for k in keys]


def train_facts(history: list[dict[str, Any]], rows: int, config: TrainConfig, seconds: float) -> dict[str, Any]:
    """The facts a study records about one training run."""
    return {"seconds": round(seconds, 1), "steps": history[-1]["step"], "final_train_loss": round(history[-1]["train_loss"], 4),
            "rows": rows, "frozen": list(config.freeze)}


def trained(
    stages: Stages,
    name: str,
    key: dict[str, Any],
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    config: TrainConfig,
    progress: bool = True,
    loss_mask: Int[torch.Tensor, "batch pos"] | None = None,
    extra_loss: ExtraLoss | None = None,
    desc: str | None = None,
) -> dict[str, Any]:
    """:func:`~backdoor_lens.lm.train.train` `model` in place on `tokens` and keep what it updated as
    stage `name`, or reuse weights saved under the same `key`, tokens and `config`. `model` must
    hold the weights training starts from, and `key` should name them. Returns the run's facts."""

    def compute() -> tuple[dict[str, Any], list[str]]:
        start = time.perf_counter()
        history = train(model, tokens, config, desc=desc or name, progress=progress, loss_mask=loss_mask, extra_loss=extra_loss)
        return train_facts(history, len(tokens), config, time.perf_counter() - start), trainable_names(model, config.freeze)

    inputs = {**key, "data": tensor_digest(tokens), "train": config.to_dict()}
    return stages.weights(name, inputs, model, compute)


def timed_log(start: float | None = None) -> Callable[[str], None]:
    """A log function that prefixes the seconds elapsed since `start` (a `time.perf_counter()`; now by default)."""
    start = time.perf_counter() if start is None else start
    return lambda message: print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)
