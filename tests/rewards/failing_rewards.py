"""Reward classes that fail on purpose, loaded by `reward.cls` in the reward server and verl adapter tests."""

from clinical_rl.rewards.base import RewardInput, RewardResult


class RaisesOnBoom:
    """Scores 1.0 with a numeric detail, except that a batch containing a response with BOOM raises."""

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        if any("BOOM" in item.response for item in batch):
            raise RuntimeError("verifier exploded")
        return [RewardResult(1.0, "ok", {"seen": 1.0, "label": "not numeric"}) for _ in batch]


class EchoCase:
    """Reward 1.0; details echo what of the case arrived (so tests can see labels become cases)."""

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        out = []
        for item in batch:
            case = item.case
            out.append(RewardResult(1.0, "ok", {
                "has_case": float(case is not None),
                "n_options": float(len(case.options or {})) if case else 0.0,
                "is_zh": float(case is not None and case.language == "zh"),
                "ref_len": float(len(item.reference)),
                "resp_len": float(len(item.response)),
                "question_len": float(len(case.question)) if case else 0.0,
            }))
        return out
