"""What makes a run reproducible, and the record that lets a reader trace a number to its run.

:func:`make_deterministic` fixes the torch thread count and asks torch for deterministic algorithms.
With both, a seeded run repeats bit for bit on the same machine with the same package versions and
thread count. Runs at another thread count, on another CPU model (other SIMD code paths), with
another torch build or on a GPU may differ in the last bits, and chaotic training can grow those
bits into visibly different models: compare such runs through their intervals, not bit for bit.

:func:`provenance` records the git commit and whether the tree was dirty, the command line, the
package versions, the thread count, the device and the CPU (model and torch's SIMD code path), for
every summary a study writes.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .validation import check_range

PACKAGES = ("backdoor_lens", "torch", "transformer-lens", "transformers", "numpy", "optuna", "scikit-learn", "datasets")


def make_deterministic(threads: int) -> int:
    """Use `threads` torch threads (intra-op) and deterministic algorithms; returns the thread count.

    Two seeded trainings at 2 threads differed without deterministic algorithms (max ``|dW|`` 0.016 after
    26 steps on the sentiment toy) and match bit for bit with them."""
    check_range("threads", threads, 1, 1024)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.get_num_threads()


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when one is absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo; None elsewhere): with torch's CPU capability
    (its SIMD code path, e.g. AVX512), what tells whether two machines can agree bit for bit."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    except OSError:
        return None


def provenance(device: str = "cpu", argv: list[str] | None = None) -> dict[str, Any]:
    """Where a result comes from: commit, dirty tree, command line, versions, threads, device, machine."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "command": " ".join(argv if argv is not None else [Path(sys.executable).name, *sys.argv]),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "device": device,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cpus": os.cpu_count()},
    }
