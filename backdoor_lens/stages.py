"""Resumable experiment stages: each stage's JSON result is saved under a key of its inputs, so a
rerun (after an interruption, or with an unchanged configuration) skips the stages already done."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .io import read_json, write_json
from .models import fingerprint

T = TypeVar("T")


class Stages:
    """Stage results in `folder` (one ``<name>.json`` each), recomputed only when their key changes."""

    def __init__(self, folder: str | Path, log: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.log = log
        self.skipped: list[str] = []
        self.ran: list[str] = []

    def run(self, name: str, inputs: Any, compute: Callable[[], T]) -> T:
        """`compute()`'s JSON-able result, reused from disk when `inputs` (any JSON-able value that
        determines the result) match the saved run's; saved atomically once computed. The value
        returned is always the one read back from disk, so a fresh and a resumed run see the same."""
        path = self.folder / f"{name}.json"
        key = fingerprint(inputs)
        if path.exists():
            saved = read_json(path)
            if saved.get("key") == key:
                self.skipped.append(name)
                self.log(f"{name}: done before, reused ({path})")
                return saved["result"]
        write_json(path, {"key": key, "result": compute()})
        self.ran.append(name)
        return read_json(path)["result"]


def timed_log(start: float | None = None) -> Callable[[str], None]:
    """A log function that prefixes the seconds elapsed since `start` (a `time.perf_counter()`; now by default)."""
    start = time.perf_counter() if start is None else start
    return lambda message: print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)
