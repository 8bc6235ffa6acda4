"""A reward for the dynamic sampling test: the candidate task's groups made uniform by diagnosis, whatever the
model says. flu: every sample right; gout: every sample wrong; measles: alternating right and wrong over the
samples in the order they are scored (a group's n samples are consecutive, so its group always varies)."""

from __future__ import annotations

from clinical_rl.rewards.base import RewardInput, RewardResult


class UniformByDiagnosis:
    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        results = []
        for i, item in enumerate(batch):
            correct = {"flu": True, "gout": False}.get(item.reference, i % 2 == 0)
            results.append(RewardResult(1.0 if correct else 0.1, "ok", {"correct": float(correct)}))
        return results
