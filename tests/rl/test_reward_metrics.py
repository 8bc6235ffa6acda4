"""reward_metrics: the reward side of a step over every scored sample, by department and by verdict."""

import math

import pytest

from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardResult
from clinical_rl.rl.batch import Group, Sample
from clinical_rl.rl.reward_metrics import reward_metrics


def result(correct: float | None, reward: float | None = None, format_ok: float = 1.0) -> RewardResult:
    """A ClinicalReward-like result: 1 correct, 0.1 wrong, 0 for a format failure; None: a failed call."""
    if correct is None:
        return RewardResult.failed("error", "judge down")
    value = reward if reward is not None else (0.0 if not format_ok else 1.0 if correct else 0.1)
    return RewardResult(value, "ok", {"correct": correct, "format_ok": format_ok, "path": "rule"})


def group(icd10: str, results: list[RewardResult], lengths: list[int]) -> Group:
    samples = [Sample([1], [2] * n, [-0.1] * n, "x", "stop", 0) for n in lengths]
    return Group(Case("q", "a", icd10=icd10), "p", samples, results)


def test_reward_by_department_verdict_and_group():
    groups = [
        # cardiology (I21): right, wrong, right, right -> rewards 1, 0.1, 1, 1
        group("I21.9", [result(1), result(0), result(1), result(1)], [10, 20, 30, 40]),
        # cardiology again: all wrong -> a zero-std group
        group("I10", [result(0), result(0), result(0), result(0)], [50, 50, 50, 50]),
        # respiratory (J18): a format failure, a failed call, two right -> 3 valid samples, not uniform
        group("J18.9", [result(0, format_ok=0.0), result(None), result(1), result(1)], [5, 7, 9, 11]),
    ]
    m = reward_metrics(groups)
    valid = [1, 0.1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.0, 1, 1]  # 11 ok samples
    assert m["reward/mean"] == pytest.approx(sum(valid) / 11)
    assert m["reward/failed_frac"] == pytest.approx(1 / 12) and m["reward/timeout_frac"] == 0.0
    assert m["reward/correct"] == pytest.approx(5 / 11)  # the detail over the samples reporting it
    assert m["reward/zero_std_group_frac"] == pytest.approx(1 / 3)
    assert m["reward/by_department/cardiology"] == pytest.approx((3.1 + 0.4) / 8)
    assert m["accuracy/by_department/cardiology"] == pytest.approx(3 / 8)
    assert m["reward/by_department/respiratory"] == pytest.approx(2 / 3)
    assert m["accuracy/by_department/respiratory"] == pytest.approx(2 / 3)
    # correct: 10, 30, 40, 9, 11; wrong: 20, 50 x 4; format failed: 5 (the failed call's 7 is in none)
    assert m["rollout/response_length/correct"] == pytest.approx(100 / 5)
    assert m["rollout/response_length/wrong"] == pytest.approx(220 / 5)
    assert m["rollout/response_length/format_failed"] == 5.0
    assert "reward/path" not in m  # string details are not metrics


def test_a_reward_without_verdicts_reports_no_accuracy_or_verdict_lengths():
    groups = [group("I10", [RewardResult(0.5, "ok"), RewardResult(0.7, "ok")], [3, 4])]
    m = reward_metrics(groups)
    assert m["reward/by_department/cardiology"] == pytest.approx(0.6)
    assert not [k for k in m if k.startswith(("accuracy/", "rollout/response_length/"))]
    assert m["reward/zero_std_group_frac"] == 0.0


def test_all_failed_is_nan_not_zero():
    m = reward_metrics([group("I10", [result(None)] * 2, [3, 4])])
    assert math.isnan(m["reward/mean"]) and math.isnan(m["reward/std"]) and m["reward/failed_frac"] == 1.0
    assert "reward/zero_std_group_frac" not in m and not [k for k in m if "by_department" in k]


def test_latency_is_logged_as_its_tail():
    results = [RewardResult(1.0, "ok", {"latency_s": float(i)}) for i in range(101)]
    m = reward_metrics([group("I10", results, [1] * 101)])
    assert m["reward/latency_s_p50"] == 50.0 and m["reward/latency_s_p99"] == pytest.approx(99.0)


def test_episode_turns_and_accuracy_by_turns():
    """Three episodes of 1, 2 and 2 turns (5 turns, 4 + 6 + 2 + 3 + 5 = 20 generated tokens); right, wrong, right."""
    samples = [Sample([1], [2] * n, [-0.1] * n, "x", "stop", 0, loss_mask=[1] * n, turn_lengths=turns)
               for n, turns in [(4, [4]), (8, [6, 2]), (8, [3, 5])]]
    m = reward_metrics([Group(Case("q", "a"), "p", samples, [result(1), result(0), result(1)])])
    assert m["episode/turns_mean"] == pytest.approx(5 / 3)
    assert m["episode/turn_tokens_mean"] == pytest.approx(20 / 5)
    assert m["accuracy/by_turns/1"] == 1.0 and m["accuracy/by_turns/2"] == 0.5
    assert not [k for k in reward_metrics([group("I10", [result(1)], [3])]) if k.startswith("episode/")]
