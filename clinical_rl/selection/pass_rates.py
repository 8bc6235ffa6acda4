"""Pass rates, the difficulty band and the selected cases' file: the pure half of `select-rl-data`.

WiNGPT-3.0 keeps for RL the cases its SFT model sometimes, but not always, solves: a case every sample gets right
teaches nothing (no advantage to follow), one no sample gets right gives no reward signal. Per case:

    pass_rate = passed / scored        # scored: the samples whose reward status is ok
    kept      = min_pass_rate <= pass_rate <= max_pass_rate     (both ends included)

A sample passes when the reward reports `details["correct"] == 1` (ClinicalReward does); for a reward class that
reports no `correct`, when its reward is at least a threshold (`select.pass_threshold`). A sample whose reward
failed (status error/timeout) is not scored: it counts neither way, and a case with no scored sample is `unscored`
and not kept.

The file is JSONL in the case schema (`data/cases.py`), which `load_cases` reads back as it reads any JSONL (the
extra keys `pass_rate`, `n_samples`, `n_scored`, `n_passed`, `mean_reward` are ignored by the loader).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardResult

Verdict = Literal["kept", "too_easy", "too_hard", "unscored"]
VERDICTS: tuple[Verdict, ...] = ("kept", "too_easy", "too_hard", "unscored")
_BAR_WIDTH = 40  # characters of the longest console histogram bar


def check_band(low: float, high: float, what: str = "band") -> None:
    """Raises ValueError (naming `what`) unless 0 <= low <= high <= 1; NaN is outside."""
    for end, value in (("low", low), ("high", high)):
        if not 0.0 <= value <= 1.0:  # also false for NaN
            raise ValueError(f"{what}: the {end} end {value} is outside [0, 1] (pass rates are fractions)")
    if low > high:
        raise ValueError(f"{what}: the low end {low} is above the high end {high}")


def sample_passes(result: RewardResult, threshold: float) -> bool | None:
    """Whether one scored sample passes: `details["correct"] == 1` when the reward reports a numeric `correct`,
    else `reward >= threshold`. None: the sample is not scored (status not ok)."""
    if result.status != "ok" or result.reward is None:
        return None
    correct = result.details.get("correct")
    if isinstance(correct, int | float):  # bool is an int: True passes
        return float(correct) == 1.0
    return result.reward >= threshold


@dataclass(frozen=True)
class CaseRate:
    """One case's outcome over its samples: how many were drawn, scored (reward ok) and passed."""

    case: Case
    n_samples: int
    n_scored: int
    n_passed: int
    mean_reward: float | None  # over the scored samples; None when none was scored
    first_error: str | None = None  # the first failed sample's error, for the summary

    @property
    def pass_rate(self) -> float | None:
        """passed / scored, in [0, 1]; None when no sample was scored."""
        return self.n_passed / self.n_scored if self.n_scored else None


def case_rates(cases: Sequence[Case], results: Sequence[Sequence[RewardResult]], threshold: float) -> list[CaseRate]:
    """One `CaseRate` per case; `results[i]` are the reward results of case i's samples (any number, also 0).

    Raises:
        ValueError: `results` and `cases` differ in length.
    """
    if len(cases) != len(results):
        raise ValueError(f"{len(cases)} cases but results for {len(results)}")
    rates = []
    for case, scored in zip(cases, results):
        passes = [sample_passes(r, threshold) for r in scored]
        rewards = [r.reward for r, p in zip(scored, passes) if p is not None]
        errors = [str(r.details.get("error", r.status)) for r, p in zip(scored, passes) if p is None]
        rates.append(CaseRate(case, len(scored), len(rewards), sum(p is True for p in passes),
                              sum(rewards) / len(rewards) if rewards else None, errors[0] if errors else None))
    return rates


def classify(rate: float | None, low: float, high: float) -> Verdict:
    """Where a pass rate falls against the band [low, high] (ends included); None is `unscored`."""
    if rate is None:
        return "unscored"
    if rate < low:
        return "too_hard"
    return "too_easy" if rate > high else "kept"


@dataclass(frozen=True)
class Selection:
    """Every case's rate and verdict against the band [low, high], in case order."""

    rates: list[CaseRate]
    verdicts: list[Verdict]
    low: float
    high: float

    @property
    def kept(self) -> list[CaseRate]:
        return [r for r, v in zip(self.rates, self.verdicts) if v == "kept"]

    def counts(self) -> dict[Verdict, int]:
        """Cases per verdict, every verdict named (0 where none)."""
        found = Counter(self.verdicts)
        return {v: found[v] for v in VERDICTS}

    def histogram(self) -> dict[str, int]:
        """Cases per pass rate (scored cases only), keyed by the rate to 4 decimals, in increasing order. With every
        sample scored the keys are the multiples of 1/n_samples that occur."""
        found = Counter(round(r.pass_rate, 4) for r in self.rates if r.pass_rate is not None)
        return {f"{rate:.4f}": found[rate] for rate in sorted(found)}


def select(rates: Sequence[CaseRate], low: float, high: float) -> Selection:
    """The verdict of every case against the band [low, high].

    Raises:
        ValueError: a band outside [0, 1] or with low > high (`check_band`).
    """
    check_band(low, high)
    return Selection(list(rates), [classify(r.pass_rate, low, high) for r in rates], low, high)


def selection_row(rate: CaseRate) -> dict[str, Any]:
    """One line of the output: the case's schema fields that are set (what `load_cases` reads: question, answer,
    id, options, answer_letter, icd10, department, language, source) and its pass-rate fields."""
    row = {f.name: getattr(rate.case, f.name) for f in dataclasses.fields(Case)}
    row["options"] = dict(row["options"]) if row["options"] else None  # a Mapping is not JSON-serialisable as is
    row = {key: value for key, value in row.items() if value not in (None, "")}
    return row | {"pass_rate": rate.pass_rate, "n_samples": rate.n_samples, "n_scored": rate.n_scored,
                  "n_passed": rate.n_passed, "mean_reward": rate.mean_reward}


def summary_path(output: Path) -> Path:
    """Where the summary of `output` goes: `<output>.summary.json`."""
    return output.with_name(output.name + ".summary.json")


def summary(selection: Selection, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary: `info` (model, data, sampling settings), the band, counts per verdict, the histogram of
    pass rates and the first reward error, if any."""
    errors = [r.first_error for r in selection.rates if r.first_error]
    return {**(info or {}), "band": [selection.low, selection.high], "cases": len(selection.rates),
            "samples": sum(r.n_samples for r in selection.rates),
            "failed_samples": sum(r.n_samples - r.n_scored for r in selection.rates),
            "counts": selection.counts(), "pass_rate_histogram": selection.histogram(),
            "first_reward_error": errors[0] if errors else None}


def write_selection(selection: Selection, output: Path, info: Mapping[str, Any] | None = None) -> Path:
    """Write the kept cases to `output` (JSONL, one `selection_row` per line, case order) and the `summary` to
    `summary_path(output)`; returns the summary's path. Each file is written to a temporary name and renamed, so
    an interrupted run leaves no half file for the PPO stage to train on. Parent directories are created.

    Raises:
        OSError: `output` cannot be written (a directory, no permission).
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(output, "".join(json.dumps(selection_row(r), ensure_ascii=False) + "\n" for r in selection.kept))
    side = summary_path(output)
    _write_atomic(side, json.dumps(summary(selection, info), ensure_ascii=False, indent=2) + "\n")
    return side


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def format_summary(selection: Selection) -> str:
    """The console summary: counts per verdict and a text histogram of the pass rates (one bar per rate)."""
    counts, total = selection.counts(), len(selection.rates)
    lines = [f"select-rl-data: kept {counts['kept']} of {total} cases with a pass rate in "
             f"[{selection.low:g}, {selection.high:g}]; too easy (above) {counts['too_easy']}, too hard (below) "
             f"{counts['too_hard']}" + (f", unscored (no valid reward) {counts['unscored']}" if counts["unscored"]
                                        else "")]
    histogram = selection.histogram()
    widest = max(histogram.values(), default=0)
    if histogram:
        lines.append("pass rate  cases")
    for key, n in histogram.items():
        mark = "*" if classify(float(key), selection.low, selection.high) == "kept" else " "
        bar = "#" * max(1, math.ceil(n * _BAR_WIDTH / widest))
        lines.append(f"  {float(key):.3f}{mark} {n:5d} {bar}")
    if histogram:
        lines.append("  (* inside the band)")
    return "\n".join(lines)
