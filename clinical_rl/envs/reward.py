"""DiagnosticChainReward: ClinicalReward's verdict on an episode's final reply, minus what the examinations cost.

Use it as `reward.cls: clinical_rl.envs.reward:DiagnosticChainReward` with `reward.kwargs`:

    clinical: {...}          # ClinicalReward's kwargs (ClinicalRewardConfig), judged on RewardInput.response
    cost_penalty: null       # reward per unit of cost; null (default): the environment's, from the episode summary
    no_exam_penalty: null    # subtracted when nothing was ordered; null: the environment's

The environment config (`DiagnosticChainConfig`) is the one place the penalties are set; the episode summary
carries them, so reward and rollout cannot drift apart. The kwargs override them (e.g. to score old episodes again).

    penalty = cost_penalty * cost + no_exam_penalty * [nothing ordered]
    reward  = max(clinical - penalty, no_think) if base > no_think else clinical - penalty

with `clinical` ClinicalReward's (possibly shaped) reward and `base` its correct / wrong value: the floor of
ClinicalReward's own shaping (see `clinical_rl.rewards.clinical`), so ordering examinations never makes an answer
worth less than one that skipped the reasoning. A reply whose format failed gets ClinicalReward's `no_think` with no
penalty, as its shaping does. Items without an `episode` are an error result, not a crash.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from clinical_rl.rewards.base import RewardInput, RewardResult
from clinical_rl.rewards.clinical import ClinicalReward

# Episode summary keys the reward reads (numbers), and how each is reported in details (-> reward/<key>).
_REPORTED = {"exams_ordered": "exams", "cost": "cost", "info_requests": "info_requests",
             "useless_requests": "useless_requests", "turns": "turns", "malformed_turns": "malformed_turns"}


class DiagnosticChainRewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    clinical: dict[str, object] = Field(default_factory=dict, description="ClinicalReward kwargs")
    cost_penalty: float | None = Field(None, ge=0, description="per unit of cost; None: the episode's")
    no_exam_penalty: float | None = Field(None, ge=0, description="when nothing was ordered; None: the episode's")


class DiagnosticChainReward:
    """Score diagnostic-chain episodes: the final reply's clinical verdict minus the examination penalties."""

    def __init__(self, **kwargs: object) -> None:
        """Raises pydantic.ValidationError for unknown or invalid kwargs (ClinicalReward's included)."""
        self.cfg = DiagnosticChainRewardConfig.model_validate(kwargs)
        self.clinical = ClinicalReward(**self.cfg.clinical)

    def score(self, batch: list[RewardInput]) -> list[RewardResult]:
        problems = [_problem(item.episode) for item in batch]
        valid = [i for i, problem in enumerate(problems) if problem is None]
        verdicts = dict(zip(valid, self.clinical.score([batch[i] for i in valid])))
        return [RewardResult.failed("error", problems[i]) if problems[i] is not None
                else self._result(item.episode, verdicts[i]) for i, item in enumerate(batch)]  # type: ignore[arg-type]

    def _result(self, episode: Mapping[str, float | str], verdict: RewardResult) -> RewardResult:
        chain = {name: float(episode[key]) for key, name in _REPORTED.items()}
        chain["ended_by_max_turns"] = float(episode.get("ended_by") == "max_turns")
        if verdict.status != "ok" or verdict.reward is None:
            return RewardResult(None, verdict.status, {**verdict.details, **chain, "chain_penalty": 0.0})
        values = self.clinical.cfg.values
        if not verdict.details.get("format_ok"):  # ClinicalReward paid no_think without shaping: no penalty either
            return RewardResult(verdict.reward, "ok", {**verdict.details, **chain, "chain_penalty": 0.0})
        rate = self.cfg.cost_penalty if self.cfg.cost_penalty is not None else float(episode.get("cost_penalty", 0))
        no_exam = self.cfg.no_exam_penalty if self.cfg.no_exam_penalty is not None \
            else float(episode.get("no_exam_penalty", 0))
        penalty = rate * chain["cost"] + (no_exam if chain["exams"] == 0 else 0.0)
        base = values.correct if verdict.details.get("correct") else values.wrong
        shaped = verdict.reward - penalty
        reward = max(shaped, values.no_think) if base > values.no_think else shaped
        return RewardResult(reward, "ok", {**verdict.details, **chain, "chain_penalty": penalty})


def _problem(episode: Mapping[str, float | str] | None) -> str | None:
    """Why an item cannot be scored as an episode (None: it can)."""
    if episode is None:
        return "no episode: DiagnosticChainReward scores multi-turn episodes (RewardInput.episode is None)"
    missing = [key for key in _REPORTED if not isinstance(episode.get(key), int | float)]
    return f"episode summary lacks numeric {', '.join(missing)}" if missing else None
