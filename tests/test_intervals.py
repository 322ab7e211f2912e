"""Intervals on rates and the verdicts drawn from them: no verdict may say more than its intervals."""

from __future__ import annotations

import pytest

from backdoor_lens.eval.intervals import (
    Estimate, agreement_verdict, compare, estimate, measured, paired_difference, removal_verdict, sign_verdict, wilson,
)
from backdoor_lens.experiments.common.report import fmt
from backdoor_lens.experiments.common.cli import parse_seeds
from backdoor_lens.experiments.common.seeds import merge


def est(value: float, low: float, high: float) -> Estimate:
    return Estimate(value, low, high, "bootstrap", 3, 150, (value,) * 3)


def test_wilson_matches_the_textbook_interval():
    low, high = wilson(45, 60)
    assert low == pytest.approx(0.6276, abs=1e-3) and high == pytest.approx(0.8425, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="hits"):
        wilson(11, 10)


def test_estimate_uses_wilson_for_one_seed_and_a_bootstrap_over_seeds_and_prompts():
    one = estimate([[1] * 45 + [0] * 15])
    assert one.method == "wilson" and one.value == 0.75 and (one.low, one.high) == pytest.approx(wilson(45, 60))
    many = estimate([[1] * 45 + [0] * 15, [1] * 30 + [0] * 30, [1] * 55 + [0] * 5])
    assert many.method == "bootstrap" and many.n_seeds == 3 and many.low < many.value < many.high
    assert many.high - many.low > one.high - one.low  # seed-to-seed spread widens it
    assert estimate([[0.1, 0.3, 0.2]], seed=0) == estimate([[0.1, 0.3, 0.2]], seed=0)  # seeded
    assert estimate([[0] * 20, [0] * 20]).high > 0  # identical 0/1 outcomes still carry a Wilson bound
    with pytest.raises(ValueError, match="NaN"):
        estimate([[0.5, float("nan")]])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (est(0.9, 0.8, 1.0), est(0.2, 0.1, 0.3), "higher"),
        (est(0.2, 0.1, 0.3), est(0.9, 0.8, 1.0), "lower"),
        (est(0.5, 0.3, 0.7), est(0.6, 0.4, 0.8), "inconclusive"),
        (est(0.5, 0.3, 0.6), est(0.7, 0.6, 0.8), "inconclusive"),  # touching intervals overlap
    ],
)
def test_compare_says_inconclusive_whenever_intervals_overlap(a, b, expected):
    assert compare(a, b) == expected


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (est(0.95, 0.9, 1.0), est(0.02, 0.0, 0.06), "removes"),
        (est(0.95, 0.9, 1.0), est(0.4, 0.3, 0.5), "weakens"),
        (est(0.95, 0.9, 1.0), est(0.9, 0.8, 0.97), "keeps"),
        (est(0.95, 0.6, 1.0), est(0.4, 0.1, 0.7), "inconclusive"),
        (est(0.0, 0.0, 0.07), est(0.0, 0.0, 0.07), "no backdoor to test"),
        (est(0.3, 0.2, 0.45), est(0.0, 0.0, 0.05), "no backdoor to test"),
    ],
)
def test_removal_verdicts_follow_the_intervals(before, after, expected):
    verdict = removal_verdict(before, after)
    assert verdict == expected
    if verdict == "removes":  # never contradicts its own intervals
        assert after.high < before.low


def test_agreement_with_a_paper_number():
    assert agreement_verdict(est(0.3, 0.2, 0.4), 0.35) == "consistent"
    assert agreement_verdict(est(0.9, 0.8, 1.0), 0.35) == "differs (ours higher)"


def test_merge_turns_rates_into_estimates_and_averages_the_rest():
    a = {"asr": measured([1, 0, 1, 1]), "heads": [[1, 2]], "scores": [[0.1]], "n": 3, "steps": 4, "name": "x"}
    b = {"asr": measured([1, 1, 1, 1]), "heads": [[2, 2]], "scores": [[0.3]], "n": 3, "steps": 6, "name": "x"}
    merged = merge([a, b])
    assert merged["asr"]["value"] == 0.875 and merged["asr"]["n_seeds"] == 2 and merged["asr"]["per_seed"] == [0.75, 1.0]
    assert merged["heads"] == [[1, 2]] and merged["scores"] == [[0.2]] and merged["n"] == 3 and merged["steps"] == 5.0
    assert fmt(merged["asr"]).startswith("0.88 [")
    assert merge([a])["asr"]["method"] == "wilson"


def test_seeds_are_a_count_or_a_list():
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("0,4,7") == (0, 4, 7) and parse_seeds("5,") == (5,)
    for bad in ("0", "x", "1,1", "-1,2"):
        with pytest.raises(ValueError, match="seeds="):
            parse_seeds(bad)


def test_a_paired_difference_resolves_what_two_overlapping_intervals_cannot():
    before = [[1] * 30 + [0] * 30, [1] * 28 + [0] * 32]
    after = [[1] * 22 + [0] * 38, [1] * 20 + [0] * 40]  # the same prompts: 8 flips each, none back
    assert compare(estimate(after), estimate(before)) == "inconclusive"
    drop = paired_difference(after, before)
    assert drop.value < 0 and sign_verdict(drop) == "lower"
    same = paired_difference(before, before)
    assert sign_verdict(same) == "inconclusive" and (same.value, same.low, same.high) == (0, 0, 0)
    mixed = paired_difference([[1, 0] * 20], [[0, 1] * 20])  # as many flips each way: no change shown
    assert mixed.value == 0 and sign_verdict(mixed) == "inconclusive"
    with pytest.raises(ValueError, match="same prompts per seed"):
        paired_difference([[1, 0]], [[1, 0, 1]])
