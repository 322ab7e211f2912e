"""Studies over several seeds: run one seed at a time into its own folder, then merge the per-seed
summaries into one whose every rate carries a 95% interval over prompts and seeds.

A per-seed summary keeps each rate as :func:`~backdoor_lens.eval.intervals.measured` (its per-prompt
outcomes). :func:`merge` walks the per-seed summaries together: rates become
:class:`~backdoor_lens.eval.intervals.Estimate` dicts; other numbers become their mean over seeds (kept as they are when all seeds agree);
lists of measured numbers (floats) of one shape become their elementwise mean; anything else (names, heads, texts) is
taken from the first seed. The per-seed summaries stay beside the merged one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...eval.intervals import estimate, is_measured
from ...util.io import write_json
from ...util.reproducibility import provenance


def seed_folder(out: Path, seed: int) -> Path:
    """Where one seed's stages, models and summary live."""
    return Path(out) / f"seed-{seed}"


def merge(summaries: Sequence[Any]) -> Any:
    """The per-seed `summaries` merged (see the module docstring); one summary merges to itself with
    its rates turned into estimates."""
    first = summaries[0]
    if is_measured(first):
        return estimate([s["outcomes"] for s in summaries]).to_dict()
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(s, dict) and k in s for s in summaries)]
        return {k: merge([s[k] for s in summaries]) for k in keys} | {k: v for k, v in first.items() if k not in keys}
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, (int, float)):
        values = [s for s in summaries if isinstance(s, (int, float)) and not isinstance(s, bool)]
        if len(values) != len(summaries) or all(v == first for v in values):
            return first
        return round(float(np.mean(values)), 6)
    if isinstance(first, list):
        if all(isinstance(s, list) and len(s) == len(first) for s in summaries) and _numeric(first):
            arrays = [np.asarray(s, dtype=float) for s in summaries]
            if all(a.shape == arrays[0].shape for a in arrays) and len(summaries) > 1:
                return np.round(np.mean(arrays, axis=0), 6).tolist()
        if all(isinstance(s, list) and len(s) == len(first) for s in summaries) and all(
            isinstance(x, dict) for x in first
        ):
            return [merge([s[i] for s in summaries]) for i in range(len(first))]
        return first
    return first


def _numeric(values: list) -> bool:
    """A (nested) list of numbers with at least one float: measured values, not ids such as heads."""
    flat: list = []
    stack = list(values)
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack += item
        else:
            flat.append(item)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat)
    return bool(flat) and numbers and any(isinstance(v, float) for v in flat)


def run_seeds(
    seeds: Sequence[int], out: Path, run_one: Callable[[int, Path], dict[str, Any]], log: Callable[[str], None] = print
) -> dict[int, dict[str, Any]]:
    """`run_one(seed, folder)` for each seed (each resumable in its own folder); the per-seed
    summaries, for the caller to :func:`merge` (whole, or as it publishes partial reports)."""
    per_seed = {}
    for seed in seeds:
        log(f"seed {seed} ({list(seeds).index(seed) + 1} of {len(seeds)})")
        per_seed[seed] = run_one(seed, seed_folder(out, seed))
    return per_seed


WALL_CLOCK_KEYS = ("seconds", "stage_seconds", "stages_reused", "stages_carried", "carried", "provenance")
"""Summary fields that record how a run went (timings, what was reused or carried from another
machine, where it ran), not its results."""


def comparable(summary: Any) -> Any:
    """`summary` without the :data:`WALL_CLOCK_KEYS`: what two runs of the same seeds and thread count
    must agree on bit for bit (an interrupted-and-resumed run included)."""
    if isinstance(summary, dict):
        return {k: comparable(v) for k, v in summary.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(summary, list):
        return [comparable(v) for v in summary]
    return summary


def finished_attacks(partial: dict[int, dict[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
    """The per-seed summaries in `partial` cut to the attacks (in `order`) that every one of them has
    finished, for a report written while a study is still running; empty when none has."""
    names = [n for n in order if all(n in p["attacks"] for p in partial.values())]
    return [p | {"attacks": {n: p["attacks"][n] for n in names}} for p in partial.values()] if names else []


def pending_runs(seeds: Sequence[int], partial: dict[int, Any], attacks: Sequence[str], shown: Sequence[str]) -> list[str]:
    """What a report showing attacks `shown` of seeds ``partial`` lacks, e.g. ``["seed 0: vpi, mtba",
    "seed 1 (every attack)"]``; empty when it shows every attack of every seed."""
    missing = [a for a in attacks if a not in shown]
    return [f"seed {s} (every attack)" if s not in partial else f"seed {s}: {', '.join(missing)}"
            for s in seeds if s not in partial or missing]


def run_seeds_by_attack(
    seeds: Sequence[int], out: Path, order: Sequence[str],
    run_one: Callable[[int, Path, Callable[[dict[str, Any]], None]], dict[str, Any]],
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]],
    write_report: Callable[[dict[str, Any], Path], None], log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """:func:`run_seeds` for a study of attacks (in `order`) that reports as it goes.
    ``run_one(seed, folder, on_attack)`` calls ``on_attack(partial)`` with its seed's summary so far
    after each attack; then the attacks every seed has finished are summarized (``summarize(trimmed)``
    of the per-seed summaries cut to them, plus the seeds, the run's provenance, timings and pending
    runs) into ``out/summary.json`` and `write_report`. Returns the last summary written: the whole
    study's."""
    start = time.perf_counter()
    done: dict[int, dict[str, Any]] = {}
    latest: dict[str, Any] = {}

    def publish(partial: dict[int, dict[str, Any]]) -> None:
        nonlocal latest
        trimmed = finished_attacks(partial, order)
        if not trimmed:
            return
        names = list(trimmed[0]["attacks"])
        summary = summarize(trimmed) | {
            "seeds": list(partial),
            "per_seed": {str(s): str(seed_folder(out, s).relative_to(out) / "summary.json") for s in partial},
            "stage_seconds": {f"seed {s} {k}": v for s, p in partial.items() for k, v in p["stage_seconds"].items()},
            "seconds": round(time.perf_counter() - start, 1), "provenance": provenance(),
            "pending": pending_runs(seeds, partial, order, names)}
        write_json(out / "summary.json", summary)
        write_report(summary, out)
        log(f"wrote {out / 'report.md'} ({', '.join(names)}; seeds {', '.join(map(str, partial))})")
        latest = summary

    def one(seed: int, folder: Path) -> dict[str, Any]:
        done[seed] = run_one(seed, folder, lambda partial: publish(done | {seed: partial}))
        return done[seed]

    run_seeds(seeds, out, one, log)
    return latest
