"""Rollouts: cases -> prompts -> samples on the engines (one turn, or episodes of an environment) -> rewards on the
reward actors, one group of `algo.n_samples_per_prompt` scored samples per case."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from clinical_rl.config import RewardConfig, RunConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.prompts import prompt_opens_think, render_prompt
from clinical_rl.launch.actors import gather
from clinical_rl.rewards.base import RewardInput, RewardResult
from clinical_rl.rewards.guard import score_on_actors
from clinical_rl.rl.batch import Group, RolloutBatch, Sample
from clinical_rl.rl.roles import Roles
from clinical_rl.tracking import PhaseTimer


def rollout_round(cfg: RunConfig, roles: Roles, timer: PhaseTimer, cases: list[Case]) -> list[Group]:
    """Render the cases' prompts, generate `algo.n_samples_per_prompt` samples each (with `env`: play as many
    episodes of it per case) and score them: one group per case, in case order.

    Raises ActorLost (an engine or reward actor lost) and TypeError (with `env`, a case that is not a ChainCase)."""
    n, system_prompt = cfg.algo.n_samples_per_prompt, cfg.data.system_prompt
    if cfg.env is None:
        prompts = [render_prompt(roles.tokenizer, c, system_prompt) for c in cases]
        with timer("generate"):
            samples = sample_on_engines(roles.engines, roles.tokenizer, prompts, n, cfg.rollout.timeout_s)
    else:
        from clinical_rl.envs.diagnostic_chain import Episode

        episodes = [[Episode(c, cfg.env) for _ in range(n)] for c in cases]  # type: ignore[arg-type]
        # The first user turn is the environment's: the presentation and how to order examinations and answer.
        prompts = [render_prompt(roles.tokenizer, dataclasses.replace(c, question=e[0].first_message()), system_prompt)
                   for c, e in zip(cases, episodes)]
        with timer("generate"):
            samples = play_on_engines(roles.engines, roles.tokenizer, prompts, episodes, cfg.rollout.timeout_s)
    with timer("reward"):
        results = score_rewards(roles, RolloutBatch.from_samples(samples, prompts, cases, pad_id(roles)), cfg.reward)
    by_group: list[tuple[list[Sample], list[RewardResult]]] = [([], []) for _ in cases]
    for sample, result in zip(samples, results):
        by_group[sample.group_id][0].append(sample)
        by_group[sample.group_id][1].append(result)
    return [Group(c, p, ss, rs) for c, p, (ss, rs) in zip(cases, prompts, by_group)]


def training_batch(roles: Roles, groups: list[Group]) -> tuple[RolloutBatch, list[RewardResult]]:
    """The kept groups as one padded batch (group ids are their positions) and its results in row order."""
    samples = [s for g in groups for s in g.samples]
    batch = RolloutBatch.from_samples(samples, [g.prompt for g in groups], [g.case for g in groups], pad_id(roles))
    return batch, [r for g in groups for r in g.results]


def generate(roles: Roles, cases: list[Case], prompts: list[str], n: int, deadline_s: float) -> RolloutBatch:
    """`n` samples of each prompt on the engines, padded into a batch."""
    samples = sample_on_engines(roles.engines, roles.tokenizer, prompts, n, deadline_s)
    return RolloutBatch.from_samples(samples, prompts, cases, pad_id(roles))


def sample_on_engines(engines: list, tokenizer: Any, prompts: list[str], n: int, deadline_s: float) -> list[Sample]:
    """`n` samples of each prompt text, the prompts split round robin over the engines; returned grouped by prompt
    (`group_id` = the prompt's index in `prompts`), prompt order kept. Also `select-rl-data`'s sampler.

    Raises ActorLost when an engine died or gave no answer within `deadline_s`."""
    return _on_engines(engines, tokenizer, prompts, deadline_s,
                       lambda engine, rows, ids: engine.generate.remote(ids, rows, n))


def play_on_engines(engines: list, tokenizer: Any, prompts: list[str], episodes: list[list[Any]],
                    deadline_s: float) -> list[Sample]:
    """Play `episodes[i]` (fresh environment episodes, one per sample) from prompt `i` on the engines, prompts split
    round robin (`RolloutEngine.run_episodes`): the episodes of an engine run concurrently on its scheduler.
    Returned grouped by prompt (`group_id` = its index), prompt order kept.

    Raises ActorLost when an engine died or gave no answer within `deadline_s`."""
    def call(engine: Any, rows: list[int], ids: list[list[int]]) -> Any:
        per_sample = [(x, i, e) for x, i in zip(ids, rows) for e in episodes[i]]
        return engine.run_episodes.remote([x for x, _, _ in per_sample], [i for _, i, _ in per_sample],
                                          [e for _, _, e in per_sample])
    return _on_engines(engines, tokenizer, prompts, deadline_s, call)


def _on_engines(engines: list, tokenizer: Any, prompts: list[str], deadline_s: float,
                call: Callable[[Any, list[int], list[list[int]]], Any]) -> list[Sample]:
    """Tokenize the prompts, give engine k the prompts k, k + E, ... (`call(engine, rows, their token ids)` returns
    the ref of its samples), gather within `deadline_s` and sort the samples by group id (stable)."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    chunks = [list(range(i, len(prompts), len(engines))) for i in range(len(engines))]
    busy = [(engine, rows) for engine, rows in zip(engines, chunks) if rows]
    refs = [call(engine, rows, [prompt_ids[i] for i in rows]) for engine, rows in busy]
    outputs = gather([engine for engine, _ in busy], refs, "rollout", deadline_s)
    return sorted((s for chunk in outputs for s in chunk), key=lambda s: s.group_id)


def pad_id(roles: Roles) -> int:
    """The policy tokenizer's padding id (its EOS where it has none)."""
    tokenizer = roles.tokenizer
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def score_rewards(roles: Roles, batch: RolloutBatch, cfg: RewardConfig) -> list[RewardResult]:
    """Score a rollout batch on the reward actors, one result per sample in batch order."""
    lengths = batch.response_lengths.long().tolist()
    items = reward_inputs(batch.prompts, batch.responses, batch.cases, lengths, batch.episodes or None)
    return score_on_actors(roles.rewards, items, cfg)


def reward_inputs(prompts: list[str], responses: list[str], cases: list[Case], lengths: list[int],
                  episodes: list[dict[str, float | str] | None] | None = None) -> list[RewardInput]:
    """What the reward sees of each sample: its rendered prompt, response text (an episode's: its final reply),
    case, response length in policy tokens and, for an episode, what the environment recorded; the lists are
    aligned, one entry per sample."""
    episodes = episodes or [None] * len(prompts)
    # The prompts were rendered by the policy's chat template: one ending in `<think>` means the template opened it.
    return [RewardInput(p, r, c.answer, c, n, think_opened=prompt_opens_think(p), episode=e)
            for p, r, c, n, e in zip(prompts, responses, cases, lengths, episodes, strict=True)]
