"""Rollout collection with DAPO's dynamic sampling: keep the groups that carry a learning signal, refill the rest.

A group whose samples all score alike (all right or all wrong) has zero advantage under every group estimator, so
it only dilutes the batch (DAPO, Yu et al. 2025, sec. 3.2; WiNGPT-3.0's online difficulty filter). `collect`
generates and scores rounds of prompts until `want` groups vary or `max_rounds` ran out, and always returns exactly
`want` groups, so the trainers' batch (and its even split over ZeRO ranks) is what the config says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from clinical_rl.config import DynamicSamplingConfig
from clinical_rl.rl.batch import Group


@dataclass(frozen=True)
class Collected:
    """The groups to train on and every group scored on the way (for the reward metrics of the step)."""

    kept: list[Group]  # exactly `want`, group ids renumbered 0..want-1 in this order
    scored: list[Group]  # every group generated this step, in generation order
    metrics: dict[str, float]  # dynamic/*

    @property
    def response_tokens(self) -> int:
        """Tokens generated this step, over every round."""
        return sum(len(s.response_ids) for g in self.scored for s in g.samples)


Round = Callable[[int], list[Group]]  # draw this many new prompts, generate n samples each and score them


def varies(group: Group, metric: str) -> bool:
    """Whether the samples with a valid reward disagree on `metric` ("correct": the reward's detail; "score": the
    reward). Fewer than two valid samples carry no group signal.

    Raises ValueError when metric is "correct" and a valid result does not report it."""
    valid = [r for r in group.results if r.status == "ok"]
    if metric == "correct":
        if any("correct" not in r.details for r in valid):
            raise ValueError("algo.dynamic_sampling.metric=correct needs the reward's `correct` detail, which this "
                             "reward class does not report: set algo.dynamic_sampling.metric=score")
        values = {float(r.details["correct"]) for r in valid}  # type: ignore[arg-type]
    else:
        values = {r.reward for r in valid}
    return len(valid) >= 2 and len(values) > 1


def collect(want: int, first_round: Round, next_round: Round, cfg: DynamicSamplingConfig | None) -> Collected:
    """`want` groups: those of `first_round(want)` when `cfg` is None; else the varying groups of up to
    `cfg.max_rounds` rounds, topped up with uniform ones (the latest first) when the rounds run out.

    Refill rounds ask for the missing groups divided by the fraction kept so far (at most `want` prompts), as the
    expected number of prompts that yields them.

    Raises ValueError (from `varies`) for metric "correct" with a reward that does not report it."""
    scored = first_round(want)
    if cfg is None:
        return Collected(_renumber(scored), scored, {})
    kept = [g for g in scored if varies(g, cfg.metric)]
    rounds = 1
    while len(kept) < want and rounds < cfg.max_rounds:
        kept_frac = len(kept) / len(scored)
        missing = want - len(kept)
        fresh = next_round(min(want, math.ceil(missing / max(kept_frac, 1.0 / want))))
        kept += [g for g in fresh if varies(g, cfg.metric)]
        scored += fresh
        rounds += 1
    uniform = [g for g in scored if not varies(g, cfg.metric)]
    filled = uniform[::-1][: max(0, want - len(kept))]
    metrics = {
        "dynamic/rounds": float(rounds),
        "dynamic/generated_groups": float(len(scored)),
        "dynamic/dropped_groups": float(len(uniform) - len(filled)),
        "dynamic/surplus_groups": float(max(0, len(kept) - want)),
        "dynamic/kept_frac": (len(scored) - len(uniform)) / len(scored),
        "dynamic/filled_uniform_groups": float(len(filled)),
    }
    return Collected(_renumber(kept[:want] + filled), scored, metrics)


def _renumber(groups: list[Group]) -> list[Group]:
    """Group i's samples carry group_id i (the batch indexes its prompts and cases by it)."""
    return [replace(g, samples=[replace(s, group_id=i) for s in g.samples]) for i, g in enumerate(groups)]
