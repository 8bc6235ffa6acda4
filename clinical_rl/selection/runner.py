"""`clinical-rl select-rl-data`: sample each RL case's answers on vLLM engine actors, score them, keep a band.

    cases   = load_cases(data.*)                     # the cases the PPO stage would train on
    prompts = render_prompt(model's tokenizer, case, data.system_prompt)     # as the RL loop renders them
    for a round of cases:                            # progress bar per round
        samples = n_samples answers per prompt       # rollout engines: rollout.temperature, top_p, max_new_tokens
        results = reward.cls(**reward.kwargs).score  # in this process, with reward.timeout_s / max_retries
    rates = pass rate per case; keep min_pass_rate <= rate <= max_pass_rate  (pass_rates.py)
    write select.output (JSONL, the PPO stage's data.path) and <output>.summary.json
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from clinical_rl.config import RunConfig
from clinical_rl.data.cases import Case
from clinical_rl.rewards.base import RewardResult
from clinical_rl.selection.pass_rates import Selection, case_rates, select, write_selection

if TYPE_CHECKING:
    from clinical_rl.rewards.guard import RewardActor
    from clinical_rl.rl.batch import Sample

_PROMPTS_PER_ENGINE = 16  # prompts per engine per round: vLLM batches them, and the bar moves every round


@dataclass(frozen=True)
class SelectionResult:
    """Where the selected cases and the summary went, and every case's rate and verdict."""

    output: Path
    summary: Path
    selection: Selection


def selection_output(cfg: RunConfig) -> Path:
    """`select.output`, or `<output_dir>/rl_data.jsonl`."""
    return Path(cfg.select.output or Path(cfg.output_dir) / "rl_data.jsonl")


def selection_model(cfg: RunConfig) -> tuple[str, str]:
    """The model that answers and the config key that names it: `select.model`, else `model.path`."""
    return (cfg.select.model, "select.model") if cfg.select.model else (cfg.model.path, "model.path")


def run_selection(cfg: RunConfig) -> SelectionResult:
    """Sample `select.n_samples` answers per case of `data` with the model of `selection_model`, score them with
    `reward.cls`, keep the cases in the band and write them (`pass_rates.write_selection`).

    Raises:
        FileNotFoundError: a missing model directory or data file.
        ValueError: bad data (`load_cases`) or reward kwargs.
        RewardFailureError: more than `reward.max_failed_frac` of a round's samples have no valid reward.
        RunStopped: an engine was lost twice on the same round (Ray restarts it after the first loss).
        TimeoutError: the engines did not start.
    """
    from transformers import AutoTokenizer

    from clinical_rl.data.loaders import load_cases
    from clinical_rl.data.prompts import render_prompt
    from clinical_rl.device import Device
    from clinical_rl.launch.engines import engine_pool
    from clinical_rl.models import check_model_dir
    from clinical_rl.rewards.guard import RewardActor

    s, d = cfg.select, cfg.data
    if cfg.env is not None:
        raise ValueError("env: select-rl-data samples one-turn answers; it does not play the diagnostic chain")
    model, key = selection_model(cfg)
    model_path = check_model_dir(model, key)
    cases = load_cases(d.path, d.format, d.fields or None, d.language, d.limit, cfg.seed, departments=d.departments,
                       builtin_per_disease=d.builtin_per_disease)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    prompts = [render_prompt(tokenizer, c, d.system_prompt) for c in cases]
    # The reward runs here, wrapped as the reward actors wrap it (timeouts, retries, a status on every sample).
    reward = RewardActor(cfg.reward)
    with engine_pool(cfg.rollout, model_path, cfg.ray, device=Device(cfg.device), dtype=cfg.model.dtype,
                     seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code,
                     what="engines of select-rl-data") as engines:
        results = _sample_and_score(engines, tokenizer, cases, prompts, reward, cfg)
    selection = select(case_rates(cases, results, s.pass_threshold), s.min_pass_rate, s.max_pass_rate)
    output = selection_output(cfg)
    info = {"model": str(model_path), "data": d.path, "n_samples": s.n_samples,
            "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
            "max_new_tokens": cfg.rollout.max_new_tokens, "reward": cfg.reward.cls, "pass_threshold": s.pass_threshold,
            "output": str(output)}
    return SelectionResult(output, write_selection(selection, output, info), selection)


def _sample_and_score(engines: list[Any], tokenizer: Any, cases: Sequence[Case], prompts: Sequence[str],
                      reward: RewardActor, cfg: RunConfig) -> list[list[RewardResult]]:
    """Per case, the reward results of its `select.n_samples` samples, in case order; rounds of
    `_PROMPTS_PER_ENGINE` prompts per engine, each scored as soon as it is sampled.

    Raises:
        RewardFailureError: a round's failed fraction passes `reward.max_failed_frac` (a dead judge endpoint, a
            broken verifier): stopping there saves sampling the rest for pass rates that would mean nothing.
        RunStopped: an engine lost twice on one round.
    """
    from clinical_rl.rl.rollouts import reward_inputs
    from clinical_rl.rl.experience import check_reward_failures

    per_round = _PROMPTS_PER_ENGINE * len(engines)
    results: list[list[RewardResult]] = []
    with tqdm(total=len(cases), desc="select-rl-data", unit="case") as bar:
        for start in range(0, len(cases), per_round):
            span = slice(start, start + per_round)
            round_cases, round_prompts = list(cases[span]), list(prompts[span])
            samples = _sample_round(engines, tokenizer, round_prompts, cfg, start)
            items = reward_inputs([round_prompts[x.group_id] for x in samples], [x.text for x in samples],
                                  [round_cases[x.group_id] for x in samples], [len(x.response_ids) for x in samples])
            scored = reward.score(items)
            check_reward_failures(scored, cfg.reward.max_failed_frac)
            per_case: list[list[RewardResult]] = [[] for _ in round_cases]
            for sample, result in zip(samples, scored, strict=True):
                per_case[sample.group_id].append(result)
            results += per_case
            bar.update(len(round_cases))
    return results


def _sample_round(engines: list[Any], tokenizer: Any, prompts: list[str], cfg: RunConfig,
                  start: int) -> list[Sample]:
    """`select.n_samples` samples per prompt (`rl.rollouts.sample_on_engines`: grouped by prompt, `group_id` the index
    in `prompts`); after a lost engine, wait for Ray to restart it and sample the round once more. `start`: the index
    of the round's first case, for messages.

    Raises:
        RunStopped: the round lost an engine twice.
    """
    from clinical_rl.launch.actors import ActorLost, wait_ready
    from clinical_rl.rl.rollouts import sample_on_engines
    from clinical_rl.rl.faults import RESTART_TIMEOUT_S, RunStopped

    n, deadline = cfg.select.n_samples, cfg.rollout.timeout_s
    try:
        return sample_on_engines(engines, tokenizer, prompts, n, deadline)
    except ActorLost as lost:
        print(f"select-rl-data: cases {start}-{start + len(prompts) - 1}: {lost}. Ray restarts it; sampling them "
              "again", flush=True)
        wait_ready(engines, "restarted engines", RESTART_TIMEOUT_S)
    try:
        return sample_on_engines(engines, tokenizer, prompts, n, deadline)
    except ActorLost as lost:
        raise RunStopped(f"select-rl-data: cases {start}-{start + len(prompts) - 1} lost an engine twice ({lost}); "
                         "nothing was written, run the command again") from lost
