"""Copy the latest experiment reports into the docs: ``results/NAME/report.md``, its
``summary.json`` (the merged one: intervals and provenance), the figures the report shows and the
PNGs beside it become ``docs/snapshots/NAME/`` (committed, since results/ is not); the benchmark's
``results/bench/NAME.json`` becomes ``docs/snapshots/bench-NAME/summary.json``. Then the numbers in README.md and the docs
are rendered from the snapshots (:mod:`render_numbers`). Run by ``make docs-results``; a name without
a report keeps its current snapshot. With ``--stages``, a study's saved stage results (keyed JSON,
never weights) are kept too, in ``docs/snapshots/NAME/stages``, for a study that spans machines to
resume from (``make collapse STAGES_FROM=docs/snapshots/collapse/stages``)."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def snapshot(results: Path, snapshots: Path, name: str) -> bool:
    """Replace snapshots/name with results/name's report.md, the images it shows and the PNGs beside
    it (its ``stages/`` stay); False without a report."""
    report = results / name / "report.md"
    if not report.is_file():
        return False
    target = snapshots / name
    for old in target.glob("*"):
        if old.is_dir() and old.name != "stages":
            shutil.rmtree(old)
        elif old.is_file():
            old.unlink()
    target.mkdir(parents=True, exist_ok=True)
    text = report.read_text(encoding="utf-8")
    (target / "report.md").write_text(text, encoding="utf-8")
    if (results / name / "summary.json").is_file():
        shutil.copyfile(results / name / "summary.json", target / "summary.json")
    beside = [p.name for p in (results / name).glob("*.png")]
    for figure in sorted(set(IMAGE.findall(text)) | set(beside)):
        source = results / name / figure
        if ".." in Path(figure).parts or not source.is_file():
            raise FileNotFoundError(f"{report} shows {figure!r}, which is not a file inside {results / name}")
        (target / figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target / figure)
    return True


def keep_stages(results: Path, snapshots: Path, name: str) -> int:
    """Add results/name's saved stage results (keyed JSON, no weights) to snapshots/name/stages,
    replacing those of the same name, so a study that spans machines resumes from the snapshot
    (``--stages-from docs/snapshots/NAME/stages``). Earlier stages the results lack are kept."""
    from backdoor_lens.experiments.common.stages import carry_stages

    return carry_stages(results / name, snapshots / name / "stages", log=lambda m: None, replace=True)


def main() -> None:
    """Snapshot each name given on the command line (default: every results/* with a report)."""
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="results folders, e.g. toy smollm gpt2m-quick collapse")
    parser.add_argument("--stages", action="store_true",
                        help="also keep each study's saved stage results (JSON) in docs/snapshots/NAME/stages")
    args = parser.parse_args()
    names = args.names or sorted(p.parent.name for p in (root / "results").glob("*/report.md"))
    for name in names:
        done = snapshot(root / "results", root / "docs" / "snapshots", name)
        print(f"{name}: {'snapshot updated' if done else 'no results/' + name + '/report.md, snapshot kept'}")
        if args.stages and (root / "results" / name).is_dir():
            print(f"{name}: {keep_stages(root / 'results', root / 'docs' / 'snapshots', name)} saved stages kept")
    for bench in sorted((root / "results" / "bench").glob("*.json")):
        target = root / "docs" / "snapshots" / f"bench-{bench.stem}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bench, target / "summary.json")
        print(f"bench-{bench.stem}: snapshot updated")
    sys.path.insert(0, str(Path(__file__).parent))
    import render_numbers

    render_numbers.main_fill()
    print("numbers in README.md and the docs rendered from the snapshots")


if __name__ == "__main__":
    main()
