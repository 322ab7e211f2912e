"""Fill the measured numbers in README.md and the docs from the committed snapshot summaries.

A number in prose is written as a marker pair around its rendered text::

    <!-- n: toy models/sent2/edits/none/negativity/p+t -->0.82 [0.71, 0.90]<!-- /n -->

``toy`` names ``docs/snapshots/toy/summary.json``; the path that follows walks it, ``/`` between keys
(list indices are numbers). An optional ``| format`` picks the rendering: ``ci`` (the default: value
and 95% interval), ``value``, ``pct`` (value in percent), ``pct-ci``, ``int``, ``sci`` (scientific
notation, e.g. 1.1e-10), ``s`` (seconds as minutes), ``n`` (how many items a list holds, e.g. the
seeds), ``text``. ``make docs-results`` rewrites the text between the markers; a test renders the
files and fails when any differs from what is committed, so no figure is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = ROOT / "docs" / "snapshots"
FILES = ("README.md", "docs/experiments/toy.md", "docs/experiments/smollm.md",
         "docs/experiments/gpt2m.md", "docs/experiments/collapse.md")
MARKER = re.compile(r"<!-- n: (?P<snapshot>[\w.-]+) (?P<path>[^|>]+?)(?: \| (?P<format>[\w-]+))? -->(?P<text>.*?)<!-- /n -->",
                    re.S)


@cache
def summary(snapshot: str) -> dict[str, Any]:
    """The committed summary of one snapshot."""
    path = SNAPSHOTS / snapshot / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"snapshot {snapshot!r} has no {path.relative_to(ROOT)}; run make docs-results")
    return json.loads(path.read_text(encoding="utf-8"))


def lookup(snapshot: str, path: str) -> Any:
    """The value at `path` (keys joined by ``/``) in `snapshot`'s summary; errors say where it stopped."""
    node: Any = summary(snapshot)
    walked = []
    for key in path.strip().split("/"):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            options = list(node)[:12] if isinstance(node, dict) else f"{len(node)} items" if isinstance(node, list) else node
            raise KeyError(f"{snapshot}: {'/'.join(walked) or '(top)'} has no {key!r}; it has {options}")
        walked.append(key)
    return node


def render(value: Any, form: str | None) -> str:
    """`value` as text in the given format (see the module docstring)."""
    form = form or "ci"
    estimate = isinstance(value, dict) and {"value", "low", "high"} <= set(value)
    point = value["value"] if estimate else value
    if form == "text":
        return str(value)
    if form == "n":
        return str(len(value))
    if form == "int":
        return f"{round(point):,}"
    if form == "sci":
        return f"{point:.1e}"
    if form == "s":
        return f"{point / 60:.0f} min" if point >= 90 else f"{point:.0f} s"
    if form in ("pct", "pct-ci"):
        text = f"{100 * point:.0f}%"
        return text + (f" [{100 * value['low']:.0f}, {100 * value['high']:.0f}]" if form == "pct-ci" and estimate else "")
    if form == "value" or not estimate:
        return f"{point:.2f}" if isinstance(point, float) else str(point)
    if form == "ci":
        return f"{value['value']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"
    raise ValueError(f"format {form!r} is not valid; use ci, value, pct, pct-ci, int, sci, s, n or text")


def fill(text: str) -> str:
    """`text` with every marker's number rendered from its snapshot."""
    def replace(m: re.Match) -> str:
        rendered = render(lookup(m["snapshot"], m["path"]), m["format"])
        fmt = f" | {m['format']}" if m["format"] else ""
        return f"<!-- n: {m['snapshot']} {m['path'].strip()}{fmt} -->{rendered}<!-- /n -->"

    return MARKER.sub(replace, text)


def stale(root: Path = ROOT) -> list[str]:
    """The files whose numbers differ from their snapshots."""
    out = []
    for name in FILES:
        path = root / name
        if path.is_file() and fill(path.read_text(encoding="utf-8")) != path.read_text(encoding="utf-8"):
            out.append(name)
    return out


def main_fill() -> None:
    """Rewrite every file's numbers in place from the snapshots."""
    for name in FILES:
        path = ROOT / name
        if path.is_file():
            path.write_text(fill(path.read_text(encoding="utf-8")), encoding="utf-8")


def main() -> None:
    """Rewrite the numbers in place (default), or with --check only list the stale files (exit 1 if any)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files whose numbers are stale")
    args = parser.parse_args()
    if args.check:
        names = stale()
        print("\n".join(names) or "all numbers match their snapshots")
        sys.exit(1 if names else 0)
    main_fill()


if __name__ == "__main__":
    main()
