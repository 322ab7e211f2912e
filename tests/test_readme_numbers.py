"""The README's and the docs' measured numbers are rendered from the committed snapshot summaries:
this fails when any of them differs from the snapshot it cites (run ``make docs-results`` to refresh)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("render_numbers", ROOT / "docs" / "render_numbers.py")
render_numbers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_numbers)


def test_every_number_in_the_readme_and_docs_matches_its_snapshot():
    assert render_numbers.stale() == []


def test_the_readme_cites_snapshots():
    assert len(render_numbers.MARKER.findall((ROOT / "README.md").read_text(encoding="utf-8"))) >= 10


def test_markers_render_and_a_wrong_number_is_caught(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    estimate = {"value": 0.8, "low": 0.7, "high": 0.9, "method": "wilson", "n_seeds": 1, "n": 60, "per_seed": [0.8]}
    (tmp_path / "demo" / "summary.json").write_text(json.dumps({"a": {"asr": estimate, "rows": [{"s": 150.0}]}, "seeds": [0, 1, 2]}))
    monkeypatch.setattr(render_numbers, "SNAPSHOTS", tmp_path)
    render_numbers.summary.cache_clear()
    text = ("ASR <!-- n: demo a/asr -->0.99<!-- /n --> or <!-- n: demo a/asr | pct -->x<!-- /n -->, "
            "in <!-- n: demo a/rows/0/s | s -->?<!-- /n --> over <!-- n: demo seeds | n -->?<!-- /n --> seeds")
    filled = render_numbers.fill(text)
    assert filled == ("ASR <!-- n: demo a/asr -->0.80 [0.70, 0.90]<!-- /n --> or <!-- n: demo a/asr | pct -->80%<!-- /n -->, "
                      "in <!-- n: demo a/rows/0/s | s -->2 min<!-- /n --> over <!-- n: demo seeds | n -->3<!-- /n --> seeds")
    assert render_numbers.fill(filled) == filled and filled != text
    with pytest.raises(KeyError, match="a has no 'nope'"):
        render_numbers.fill("<!-- n: demo a/nope -->1<!-- /n -->")
    render_numbers.summary.cache_clear()
