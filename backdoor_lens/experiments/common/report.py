"""Report building blocks: numbers with their intervals, Markdown tables, the provenance footer and
matplotlib (Agg) figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

from ...eval.intervals import Estimate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def is_estimate(value: Any) -> bool:
    """Whether `value` is an :class:`~backdoor_lens.eval.intervals.Estimate` as stored in a summary."""
    return isinstance(value, dict) and {"value", "low", "high"} <= set(value)


def value(x: Any) -> Any:
    """The point value of an estimate (as stored in a summary), or `x` itself."""
    return x["value"] if is_estimate(x) else x


def estimate_of(x: Any) -> Estimate:
    """`x` as an Estimate (a bare number becomes one seed's value with no interval)."""
    if is_estimate(x):
        return Estimate.from_dict(x)
    return Estimate(float(x), float(x), float(x), "single", 1, 1, (float(x),))


def fmt(x: Any, digits: int = 2) -> str:
    """Estimates as ``value [low, high]``, numbers to fixed decimals, None to an em dash, anything else as text."""
    if x is None:
        return "—"
    if is_estimate(x):
        if x["low"] == x["high"] == x["value"] and x["method"] in ("exact", "single"):
            return f"{x['value']:.{digits}f}"
        return f"{x['value']:.{digits}f} [{x['low']:.{digits}f}, {x['high']:.{digits}f}]"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def heads_share(fraction: float, n_heads: int, total: int) -> str:
    """A share of heads with its count, e.g. ``3% (1 of 32 heads)``."""
    return f"{100 * fraction:.3g}% ({n_heads} of {total} heads)"


def pending_note(summary: dict[str, Any]) -> str:
    """Markdown: which attacks and seeds a report written mid-run does not hold yet ("" when complete)."""
    pending = summary.get("pending")
    if not pending:
        return ""
    return (f"**Partial report: the study is still running (or was stopped).** Not in it yet: {', '.join(pending)}. "
            "Rerunning the same command resumes from the saved stages and completes it.")


def machine(facts: dict[str, Any]) -> str:
    """The machine as the footer names it: processor, CPU model and torch's SIMD path where recorded, CPUs."""
    known = [facts.get(k) for k in ("processor", "cpu_model", "cpu_capability")]
    return f"{', '.join(str(k) for k in known if k)} ({facts['cpus']} CPUs)"


def provenance_footer(summary: dict[str, Any]) -> str:
    """Markdown: where the numbers come from (commit, command, seeds, threads, versions, wall time)."""
    p = summary.get("provenance")
    if not p:
        return ""
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items() if v)
    stages = summary.get("stage_seconds") or {}
    slowest = sorted(stages.items(), key=lambda kv: -kv[1])[:6]
    timing = "; ".join(f"{name} {seconds:.0f} s" for name, seconds in slowest)
    dirty = " (working tree with uncommitted changes)" if p.get("dirty") else ""
    return (
        "## Provenance\n\n"
        f"- commit `{p['commit']}`{dirty}\n"
        f"- command: `{p['command']}`\n"
        f"- seeds: {', '.join(str(s) for s in summary.get('seeds', []))}; intervals are 95% (Wilson for one seed's "
        "0/1 outcomes, otherwise a bootstrap over prompts and seeds)\n"
        f"- torch threads: {p['torch_threads']}, deterministic algorithms: {p['deterministic_algorithms']}, "
        f"device: {p['device']}, machine: {machine(p['machine'])}\n"
        f"- versions: {versions}\n"
        f"- wall time: {summary.get('seconds', 0):.0f} s in all" + (f"; longest stages: {timing}" if timing else "")
    )


def band(ax: Any, x: Sequence[float], estimates: Sequence[Any], **style: Any) -> None:
    """Plot estimates' values as a line with their 95% intervals as a shaded band on `ax`."""
    points = [estimate_of(e) for e in estimates]
    (line,) = ax.plot(x, [p.value for p in points], **style)
    ax.fill_between(x, [p.low for p in points], [p.high for p in points], color=line.get_color(), alpha=0.15)


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Save a PNG (written to a temporary name first, then moved into place) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
