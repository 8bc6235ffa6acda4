"""The reward side of a step's metrics: over every sample scored in the step, by clinical stratum.

With dynamic sampling these cover every generated group, the dropped ones included: they measure the policy, not
the filtered batch it trains on (whose accuracy the filter pulls towards one half).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardResult
from clinical_rl.rl.batch import Group


def reward_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """reward/*, accuracy/by_department/* and rollout/response_length/<verdict> over every sample of `groups`.

    Reward parts are the numeric details the reward class reports; `correct` and `format_ok` give the verdicts.
    A metric with no sample to average is absent, except reward/mean and reward/std (NaN)."""
    cases = [g.case for g in groups for _ in g.samples]
    results = [r for g in groups for r in g.results]
    lengths = [len(s.response_ids) for g in groups for s in g.samples]
    group_ids = [i for i, g in enumerate(groups) for _ in g.samples]
    statuses = [r.status for r in results]
    ok = [i for i, r in enumerate(results) if r.status == "ok"]
    scores = torch.tensor([results[i].reward for i in ok], dtype=torch.float64)
    m: dict[str, float] = {
        "reward/mean": scores.mean().item() if ok else math.nan,
        "reward/std": scores.std().item() if len(ok) > 1 else math.nan,
        "reward/failed_frac": statuses.count("error") / len(statuses),
        "reward/timeout_frac": statuses.count("timeout") / len(statuses),
    }
    m |= _parts(results)
    m |= _zero_std_groups(results, group_ids)
    m |= _by_department(cases, results, ok)
    m |= _length_by_verdict(results, lengths, ok)
    m |= _turns([s.turn_lengths for g in groups for s in g.samples], results, ok)
    return m


def _parts(results: Sequence[RewardResult]) -> dict[str, float]:
    """Mean of each numeric detail over the samples reporting it; `*latency_s` as p50/p99 (a verifier behind a
    network is judged by its tail)."""
    reported: dict[str, list[float]] = defaultdict(list)
    for r in results:
        for key, value in r.details.items():
            if isinstance(value, (int, float)):  # strings (path, missing_reason) are not metrics
                reported[key].append(float(value))
    m: dict[str, float] = {}
    for key, values in sorted(reported.items()):
        t = torch.tensor(values, dtype=torch.float64)
        if key.endswith("latency_s"):
            m[f"reward/{key}_p50"] = t.quantile(0.5).item()
            m[f"reward/{key}_p99"] = t.quantile(0.99).item()
        else:
            m[f"reward/{key}"] = t.mean().item()
    return m


def _zero_std_groups(results: Sequence[RewardResult], group_ids: Sequence[int]) -> dict[str, float]:
    """Share of groups (two or more valid samples) whose rewards are all equal: zero advantage under every group
    estimator, so no gradient from them (what dynamic sampling drops)."""
    groups: dict[int, set[float]] = defaultdict(set)
    sizes: dict[int, int] = defaultdict(int)
    for r, g in zip(results, group_ids):
        if r.status == "ok":
            groups[g].add(float(r.reward))  # type: ignore[arg-type]
            sizes[g] += 1
    counted = [g for g in groups if sizes[g] >= 2]
    if not counted:
        return {}
    return {"reward/zero_std_group_frac": sum(len(groups[g]) == 1 for g in counted) / len(counted)}


def _by_department(cases: Sequence[Case], results: Sequence[RewardResult], ok: list[int]) -> dict[str, float]:
    """Mean reward and, where the reward reports `correct`, accuracy per department of the case."""
    rewards: dict[str, list[float]] = defaultdict(list)
    correct: dict[str, list[float]] = defaultdict(list)
    for i in ok:
        department = str(cases[i].department)
        rewards[department].append(float(results[i].reward))  # type: ignore[arg-type]
        if isinstance(value := results[i].details.get("correct"), (int, float)):
            correct[department].append(float(value))
    m = {f"reward/by_department/{d}": sum(v) / len(v) for d, v in sorted(rewards.items())}
    return m | {f"accuracy/by_department/{d}": sum(v) / len(v) for d, v in sorted(correct.items())}


def _length_by_verdict(results: Sequence[RewardResult], lengths: Sequence[int], ok: list[int]) -> dict[str, float]:
    """Mean response length (tokens) of the correct, the wrong and the format-failed samples: whether length
    goes with being right, and whether reasoning grows or collapses."""
    by_verdict: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        details = results[i].details
        if details.get("format_ok") == 0:
            by_verdict["format_failed"].append(lengths[i])
        elif isinstance(value := details.get("correct"), (int, float)):
            by_verdict["correct" if value == 1 else "wrong"].append(lengths[i])
    return {f"rollout/response_length/{v}": sum(ls) / len(ls) for v, ls in sorted(by_verdict.items())}


def _turns(turn_lengths: Sequence[list[int] | None], results: Sequence[RewardResult], ok: list[int]
           ) -> dict[str, float]:
    """Multi-turn episodes: model turns per episode, generated tokens per turn, and accuracy by the number of turns
    the episode took (does asking more lead to better answers?). Absent for single-turn rollouts."""
    if all(t is None for t in turn_lengths):
        return {}
    turns = [t or [] for t in turn_lengths]
    m = {"episode/turns_mean": sum(map(len, turns)) / len(turns),
         "episode/turn_tokens_mean": sum(map(sum, turns)) / max(1, sum(map(len, turns)))}
    by_turns: dict[int, list[float]] = defaultdict(list)
    for i in ok:
        if isinstance(value := results[i].details.get("correct"), (int, float)):
            by_turns[len(turns[i])].append(float(value))
    return m | {f"accuracy/by_turns/{k}": sum(v) / len(v) for k, v in sorted(by_turns.items())}
