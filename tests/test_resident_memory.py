"""The benchmarks' CPU memory measure: a route's peak resident set, read in a fresh process, must see
what the route allocates even when its setup already ran the route once (a warm-up, or the head means
BAHA needs) and the caller's environment tells the allocator to keep freed memory."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from resident_memory import fresh_process_result  # noqa: E402

ROUTE = f"""
import sys
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import torch
from resident_memory import peak_during, rss
layer, x = torch.nn.Linear(1024, 1024), torch.randn(64, 1024)

def route():  # keeps 20 activations of 256 KiB for backward: 5 MiB
    h = x
    for _ in range(20):
        h = torch.relu(layer(h))
    return h.sum()

route()  # setup ran it once already
start = rss()
print((peak_during(route) - start) / 2**20)
"""


def test_a_route_keeping_5_mib_reads_5_mib_when_setup_ran_it_and_the_caller_keeps_freed_memory(monkeypatch):
    # the settings under which BAHA's SmolLM2 routes read about 1 MiB: memory freed after setup is reused
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(2**30))
    monkeypatch.setenv("MALLOC_TOP_PAD_", str(2**28))
    assert 4 <= float(fresh_process_result([sys.executable, "-c", ROUTE])) <= 12
