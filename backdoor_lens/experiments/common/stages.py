"""Resumable study stages, the one reuse-if-unchanged mechanism of the studies.

Every result a study saves (a stage's JSON, trained weights, a whole model, a growing table of
answers) is stored under ``folder`` with a key: a fingerprint of everything that determines it. A
rerun reuses a result whose key matches and recomputes one whose key changed, so an interrupted or
repeated study picks up where it stopped, and a changed setting never reads a stale result.

Caches heal: a saved result that cannot be read (a file cut short by a kill, a model folder without
its completion marker, a corrupt file) is reported with its path, set aside as
``<name>.corrupt-<time>`` and recomputed. (:class:`~backdoor_lens.experiments.common.cli.FolderLock`
keeps two runs out of one folder.)

Each result also keeps the seconds its computation took, so a resumed study still knows what every
stage cost (:attr:`Stages.seconds`), which is what a profile of a study's stages reads, and what it
was measured on (:attr:`Stages.measured_on`), so a result carried from another machine is named.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from jaxtyping import Int

from ...lm.lora import LoraConfig, train_weights
from ...lm.training import ExtraLoss, TrainConfig
from ...models.protocol import HookedModel
from ...models.storage import load_model, save_model, saved_completely
from ...util.hashing import fingerprint, tensor_digest
from ...util.io import (
    RefusedFileError,
    load_tensors,
    read_json,
    save_tensors,
    set_aside,
    write_json,
)

T = TypeVar("T")


class Stages:
    """Keyed results in `folder`, recomputed only when their key changes; `log` reports reuse."""

    def __init__(self, folder: str | Path, log: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.log = log
        self.skipped: list[str] = []
        self.ran: list[str] = []
        self.seconds: dict[str, float | None] = {}
        """Compute seconds of each stage this object ran or reused, as saved when it was computed (None
        for a result saved before stages were timed, unless its facts hold training seconds)."""
        self.measured_on: dict[str, Any] = {}
        """What this run's results are measured on that their keys leave out because it differs from
        machine to machine, e.g. the digest of the planted weights; saved beside each JSON result."""
        self.carried: list[str] = []
        """Reused results that were measured on something else (their saved :attr:`measured_on` differs):
        results computed on another machine, from the same inputs."""

    def _timed(self, name: str, seconds: Any) -> float | None:
        """Record `seconds` as stage `name`'s compute time, rounded (None when not a number: unknown)."""
        known = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
        self.seconds[name] = round(float(seconds), 1) if known else None
        return self.seconds[name]

    def _reused(self, name: str, path: Path) -> None:
        self.skipped.append(name)
        self.log(f"{name}: done before, reused ({path})")

    def _read(self, path: Path, read: Callable[[Path], T]) -> T | None:
        """`read(path)`, or None after setting aside a saved result that cannot be read (reported)."""
        try:
            return read(path)
        except (RefusedFileError, OSError, KeyError, TypeError, AttributeError) as err:
            moved = set_aside(path)
            self.log(f"{path}: unreadable ({err}); set aside as {moved.name}, recomputing")
            return None

    def run(self, name: str, inputs: Any, compute: Callable[[], T]) -> T:
        """`compute()`'s JSON-able result, reused from ``<name>.json`` when `inputs` (any JSON-able
        value that determines the result) match the saved run's; saved atomically once computed. The
        value returned is always the one read back from disk, so a fresh and a resumed run see the same."""
        path = self.folder / f"{name}.json"
        key = fingerprint(inputs)
        saved = self._read(path, _keyed_json) if path.exists() else None
        if saved is not None and saved["key"] == key:
            self._reused(name, path)
            self._timed(name, saved.get("seconds"))
            if saved["measured_on"] != self.measured_on:
                self.carried.append(name)
                self.log(f"{name}: measured on {saved['measured_on']}, this run has {self.measured_on}")
            return saved["result"]
        start = time.perf_counter()
        result = compute()
        write_json(path, {"key": key, "result": result, "seconds": self._timed(name, time.perf_counter() - start),
                          "measured_on": self.measured_on})
        self.ran.append(name)
        return read_json(path)["result"]

    def group(self, name: str, inputs: Any, compute: Callable[[], T]) -> T:
        """:meth:`run` for a `compute` that runs stages of its own (trains weights, measures them):
        once saved, the whole group is reused without them, and so without the weights they keep,
        which is what lets a finished group carry to another machine (:func:`carry_stages`). The
        seconds of each inner stage are saved with it and restored on reuse."""
        before = set(self.seconds)

        def timed() -> dict[str, Any]:
            result = compute()
            return {"result": result, "stage_seconds": {k: v for k, v in self.seconds.items() if k not in before}}

        saved = self.run(name, inputs, timed)
        del self.seconds[name]
        self.seconds.update(saved["stage_seconds"])
        return saved["result"]

    def weights(
        self, name: str, inputs: Any, model: HookedModel, compute: Callable[[], tuple[dict[str, Any], Sequence[str]]]
    ) -> dict[str, Any]:
        """Weights that `compute()` trains into `model` in place, kept in ``<name>.safetensors``.

        `compute` returns the run's facts (JSON-able) and the names of the parameters it changed;
        only those are saved. When the file holds weights saved under the same `inputs`, they are
        loaded into `model` instead (which must hold the weights training starts from) and the saved
        facts are returned."""
        path = self.folder / f"{name}.safetensors"
        key = fingerprint(inputs)
        saved = self._read(path, load_tensors) if path.exists() else None
        if saved is not None and saved[1].get("key") == key and "facts" in saved[1]:
            model.load_state_dict(saved[0], strict=False)
            self._reused(name, path)
            facts = saved[1]["facts"]
            self._timed(name, saved[1].get("seconds", facts.get("seconds") if isinstance(facts, dict) else None))
            return facts
        start = time.perf_counter()
        facts, changed = compute()
        params = dict(model.named_parameters())
        seconds = self._timed(name, time.perf_counter() - start)
        save_tensors(path, {n: params[n] for n in changed}, {"key": key, "facts": facts, "seconds": seconds})
        self.ran.append(name)
        return facts

    def model(
        self, name: str, inputs: Any, compute: Callable[[], tuple[HookedModel, dict[str, Any]]]
    ) -> tuple[HookedModel, dict[str, Any]]:
        """A whole model that `compute()` builds and trains, kept as a folder ``<name>/`` that
        :func:`~backdoor_lens.models.storage.load_model` reads (config and safetensors), with the
        run's facts; reused when saved under the same `inputs`."""
        path = self.folder / name
        key = fingerprint(inputs)
        if path.exists() and not saved_completely(path):
            self.log(f"{path}: saved incompletely (no complete.json matching its files); set aside as "
                     f"{set_aside(path).name}, recomputing")
        saved = self._read(path, load_model) if path.exists() else None
        if saved is not None and saved[1].get("key") == key and "facts" in saved[1]:
            self._reused(name, path)
            self._timed(name, saved[1].get("seconds"))
            return saved[0], saved[1]["facts"]
        start = time.perf_counter()
        model, facts = compute()
        save_model(model, path, {"key": key, "facts": facts, "seconds": self._timed(name, time.perf_counter() - start)})
        self.ran.append(name)
        return model, facts

    def table(self, name: str, inputs: Any) -> "Table":
        """A JSON table (``<name>.json``) that grows as rows are computed and is saved as it grows,
        valid for `inputs` (a stale or unreadable one starts empty)."""
        path = self.folder / f"{name}.json"
        saved = self._read(path, _keyed_json) if path.exists() else None
        key = fingerprint(inputs)
        rows = saved["result"] if saved is not None and saved["key"] == key and isinstance(saved["result"], dict) else {}
        return Table(path, key, rows)


def _keyed_json(path: Path) -> dict[str, Any]:
    """A saved ``{"key": ..., "result" or "rows": ...}`` file as ``{"key", "result"}``; KeyError if it is not one."""
    saved = read_json(path)
    return {"key": saved["key"], "result": saved["result"] if "result" in saved else saved["rows"],
            "seconds": saved.get("seconds"), "measured_on": saved.get("measured_on", {})}


class Table:
    """Keys to JSON-able values, saved after every :meth:`fill` so an interrupted run loses nothing."""

    def __init__(self, path: Path, key: str, rows: dict[str, Any] | None = None):
        self.path, self.key = path, key
        self.rows: dict[str, Any] = dict(rows or {})

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
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    config: TrainConfig,
    progress: bool = True,
    loss_mask: Int[torch.Tensor, "batch pos"] | None = None,
    extra_loss: ExtraLoss | None = None,
    desc: str | None = None,
    lora: LoraConfig | None = None,
) -> dict[str, Any]:
    """:func:`~backdoor_lens.lm.lora.train_weights` `model` in place on `tokens` (through `lora`
    adapters when given) and keep what it updated as stage `name`, or reuse weights saved under the
    same `key`, tokens, `config` and `lora`. `model` must hold the weights training starts from, and
    `key` should name them. Returns the run's facts."""

    def compute() -> tuple[dict[str, Any], list[str]]:
        start = time.perf_counter()
        history, changed = train_weights(model, tokens, config, lora, desc=desc or name, progress=progress,
                                         loss_mask=loss_mask, extra_loss=extra_loss)
        return train_facts(history, len(tokens), config, time.perf_counter() - start), changed

    inputs = {**key, "data": tensor_digest(tokens), "train": config.to_dict()} | ({} if lora is None else {"lora": asdict(lora)})
    return stages.weights(name, inputs, model, compute)


def portable(facts: Any) -> Any:
    """`facts` without what differs between machines for the same run (at any depth): ``seconds``
    and the ``digest`` of trained weights (CPU models round differently, so the same training on
    two machines can end in weights that differ in their last bits). What a later stage's key may
    hold, so a result computed on one machine is reused on another; the digest it was measured on
    stays beside it (:attr:`Stages.measured_on`)."""
    if isinstance(facts, dict):
        return {k: portable(v) for k, v in facts.items() if k not in ("seconds", "digest")}
    return facts


def carry_stages(source: str | Path, folder: str | Path, log: Callable[[str], None] = print, replace: bool = False) -> int:
    """Copy the JSON results under `source` (a study's folder, or the ``stages`` of its committed
    snapshot) into `folder` where `folder` has none of that name (or over it, with `replace`), so a
    study resumes on another machine from the results computed on the first. Only keyed JSON is
    carried, never weights or summaries: each result is still reused only where its key matches.
    Returns the number of files copied."""
    source, folder = Path(source), Path(folder)
    if not source.is_dir():
        raise FileNotFoundError(f"stages_from={str(source)!r} is not a folder of saved stages")
    copied = 0
    for path in sorted(source.rglob("*.json")):
        target = folder / path.relative_to(source)
        if path.name == "summary.json" or (target.exists() and not replace) or _readable_key(path) is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, read_json(path))
        copied += 1
    log(f"carried {copied} saved stages from {source} into {folder}")
    return copied


def _readable_key(path: Path) -> str | None:
    """The key of a saved stage at `path`, or None when it is not one (another JSON file, or unreadable)."""
    try:
        return _keyed_json(path)["key"]
    except (RefusedFileError, OSError, KeyError, TypeError):
        return None


def timed_log(start: float | None = None) -> Callable[[str], None]:
    """A log function that prefixes the seconds elapsed since `start` (a `time.perf_counter()`; now by default)."""
    start = time.perf_counter() if start is None else start
    return lambda message: print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)
