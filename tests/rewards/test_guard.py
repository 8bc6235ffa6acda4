"""RewardActor: a failing, slow or malformed verifier ends in a status, never in a score."""

import math
import time

import pytest

from clinical_rl.rewards.guard import RewardActor
from clinical_rl.config import RewardConfig
from clinical_rl.rewards.base import RewardInput, RewardResult

BATCH = [RewardInput("q", f"<think>t</think>{a}", "flu") for a in ("flu", "cold", "boom")]


class Raises:
    def score(self, batch):
        raise ConnectionError("judge endpoint unreachable")


class Sleeps:
    def score(self, batch):
        time.sleep(5)
        return [RewardResult(1.0, "ok")] * len(batch)


class WrongLength:
    def score(self, batch):
        return [RewardResult(1.0, "ok")] * (len(batch) - 1)


class NotFinite:
    def score(self, batch):
        return [RewardResult(math.nan, "ok")] * len(batch)


class FailsOnBoom:
    """Fails the whole batch when one sample is bad: the actor isolates that sample."""

    def score(self, batch):
        if any("boom" in item.response for item in batch):
            raise ValueError("cannot parse boom")
        return [RewardResult(1.0 if "flu" in i.response else 0.1, "ok") for i in batch]


class Flaky:
    calls = 0

    def score(self, batch):
        Flaky.calls += 1
        if Flaky.calls == 1:
            raise TimeoutError("first call fails")
        return [RewardResult(0.5, "ok")] * len(batch)


def actor(cls: type, **kw) -> RewardActor:
    return RewardActor(RewardConfig(cls=f"{__name__}:{cls.__name__}", **kw))


def test_builtin_reward_scores_in_order():
    results = RewardActor(RewardConfig()).score(BATCH)
    assert [r.reward for r in results] == [1.0, 0.1, 0.1]
    assert all(r.status == "ok" for r in results)


def test_exception_becomes_error_status_after_retries():
    results = actor(Raises, max_retries=1).score(BATCH)
    assert [r.status for r in results] == ["error"] * 3
    assert all(r.reward is None for r in results)
    assert "judge endpoint unreachable" in results[0].details["error"]


def test_slow_verifier_times_out():
    start = time.perf_counter()
    results = actor(Sleeps, timeout_s=0.2, max_retries=0).score(BATCH[:1])
    assert results[0].status == "timeout" and results[0].reward is None
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("cls", [WrongLength, NotFinite])
def test_malformed_results_are_errors(cls):
    results = actor(cls, max_retries=0).score(BATCH)
    assert [r.status for r in results] == ["error"] * 3


def test_one_bad_sample_is_isolated():
    results = actor(FailsOnBoom, max_retries=0).score(BATCH)
    assert [r.status for r in results] == ["ok", "ok", "error"]
    assert [r.reward for r in results[:2]] == [1.0, 0.1]


def test_retry_recovers_from_a_transient_failure():
    Flaky.calls = 0
    results = actor(Flaky, max_retries=2).score(BATCH)
    assert [r.reward for r in results] == [0.5] * 3 and Flaky.calls == 2


def test_the_reward_deadline_covers_every_retry_and_the_per_sample_isolation():
    from clinical_rl.config import RewardConfig
    from clinical_rl.rewards.guard import score_deadline_s

    cfg = RewardConfig(timeout_s=60.0, max_retries=2)
    # one pass of attempts: 60 + (0.5 + 60) + (1 + 60) = 181.5 s (timeouts plus the backoffs before retries 1 and 2)
    assert score_deadline_s(cfg, 1) == 181.5 + 30  # one item: the batch is the item
    # 16 items: the batch's pass, then each item's own pass, plus 30 s of slack = 181.5 * 17 + 30
    assert score_deadline_s(cfg, 16) == 181.5 * 17 + 30
