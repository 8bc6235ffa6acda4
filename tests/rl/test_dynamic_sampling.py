"""Dynamic sampling (DAPO): uniform groups are dropped and refilled, the batch keeps its size, the counts are logged.

`collect` is driven here by a scripted round function (the real rounds generate on vLLM engines and score on reward
actors: tests/rl/test_driver.py runs them); each case's name says how its group scores.
"""

import pytest

from clinical_rl.config import DynamicSamplingConfig
from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardResult
from clinical_rl.rl.batch import Group, Sample
from clinical_rl.rl.dynamic_sampling import collect, varies

CORRECT = {"right": [1, 1, 1, 1], "wrong": [0, 0, 0, 0], "mixed": [1, 0, 0, 1]}


def group(kind: str, index: int = 0) -> Group:
    """A group of 4 samples whose `correct` details follow CORRECT[kind] (reward 1 / 0.1 as ClinicalReward)."""
    results = [RewardResult(1.0 if c else 0.1, "ok", {"correct": float(c)}) for c in CORRECT[kind]]
    samples = [Sample([1], [2] * (index + 1), [-0.1] * (index + 1), kind, "stop", 99) for _ in results]
    return Group(Case(f"{kind} {index}", "a"), f"prompt {index}", samples, results)


class Script:
    """Rounds that hand out the scripted groups in order and record how many prompts each round asked for."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds, self.asked = kinds, []

    def __call__(self, k: int) -> list[Group]:
        self.asked.append(k)
        taken, self.kinds = self.kinds[:k], self.kinds[k:]
        return [group(kind, i) for i, kind in enumerate(taken)]


def test_half_uniform_groups_are_refilled_to_the_batch_size():
    # Round 1: 4 prompts, 2 uniform -> kept 2 of 4 (kept fraction 1/2); 2 missing -> ceil(2 / 0.5) = 4 more prompts,
    # again half uniform -> 2 more kept: 4 varying groups after 2 rounds, 4 dropped.
    script = Script(["right", "mixed", "wrong", "mixed"] * 2)
    out = collect(4, script, script, DynamicSamplingConfig(max_rounds=3))
    assert script.asked == [4, 4]
    assert len(out.kept) == 4 and all(varies(g, "correct") for g in out.kept)
    assert [s.group_id for g in out.kept for s in g.samples] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert len(out.scored) == 8
    assert out.metrics == {"dynamic/rounds": 2.0, "dynamic/generated_groups": 8.0, "dynamic/dropped_groups": 4.0,
                           "dynamic/surplus_groups": 0.0, "dynamic/kept_frac": 0.5,
                           "dynamic/filled_uniform_groups": 0.0}


def test_rounds_run_out_and_uniform_groups_keep_the_batch_size():
    # Round 1 keeps 1 of 4 (fraction 1/4): 3 missing -> ceil(3 / 0.25) = 12, capped at 4 prompts; round 2 keeps none;
    # max_rounds=2 ends it: the 3 latest uniform groups top the batch up to 4; 7 of 8 were uniform, 4 dropped.
    script = Script(["wrong", "mixed", "wrong", "right"] + ["right"] * 4)
    out = collect(4, script, script, DynamicSamplingConfig(max_rounds=2))
    assert script.asked == [4, 4]
    assert len(out.kept) == 4
    assert [g.case.question for g in out.kept] == ["mixed 1", "right 3", "right 2", "right 1"]
    assert out.metrics["dynamic/filled_uniform_groups"] == 3.0
    assert out.metrics["dynamic/dropped_groups"] == 4.0  # 7 uniform, 3 of them trained on
    assert out.metrics["dynamic/kept_frac"] == pytest.approx(1 / 8)


def test_surplus_varying_groups_are_left_out():
    script = Script(["mixed"] * 4)
    out = collect(3, script, script, DynamicSamplingConfig())
    assert script.asked == [3] and len(out.kept) == 3 and out.metrics["dynamic/rounds"] == 1.0
    assert out.metrics["dynamic/surplus_groups"] == 0.0  # 3 asked, 3 varied

    script = Script(["wrong", "mixed", "mixed", "mixed", "mixed"])
    out = collect(3, script, script, DynamicSamplingConfig())
    # round 1 keeps 2 of 3 (fraction 2/3): 1 missing -> ceil(1 / (2/3)) = 2 prompts, both vary: 1 more than needed
    assert script.asked == [3, 2] and out.metrics["dynamic/surplus_groups"] == 1.0


def test_off_takes_the_first_round_as_it_is():
    script = Script(["right", "wrong"])
    out = collect(2, script, script, None)
    assert [g.case.question for g in out.kept] == ["right 0", "wrong 1"] and out.metrics == {}


def test_varies_by_metric_and_valid_samples():
    assert varies(group("mixed"), "correct") and not varies(group("right"), "correct")
    # scores that differ (a length penalty) with the same verdict: uniform by correctness, varying by score
    shaped = Group(Case("q", "a"), "p", group("right").samples,
                   [RewardResult(1.0 - 0.01 * i, "ok", {"correct": 1.0}) for i in range(4)])
    assert not varies(shaped, "correct") and varies(shaped, "score")
    # failed samples do not count: one valid sample left carries no group signal
    failed = Group(Case("q", "a"), "p", group("mixed").samples,
                   [RewardResult(1.0, "ok", {"correct": 1.0})] + [RewardResult.failed("error", "x")] * 3)
    assert not varies(failed, "correct")
    bare = Group(Case("q", "a"), "p", group("mixed").samples, [RewardResult(float(i % 2), "ok") for i in range(4)])
    with pytest.raises(ValueError, match="metric=correct needs the reward's `correct` detail.*metric=score"):
        varies(bare, "correct")
    assert varies(bare, "score")


def test_config_needs_groups():
    from pydantic import ValidationError

    from clinical_rl.config import AlgoConfig

    with pytest.raises(ValidationError, match="dynamic_sampling needs algo.n_samples_per_prompt >= 2"):
        AlgoConfig(rollout_batch_size=4, minibatch_size=4, dynamic_sampling={})
