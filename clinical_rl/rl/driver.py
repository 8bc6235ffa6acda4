"""The controller: one process that places the roles, runs the PPO loop and saves the policy.

`rl_step` is the algorithm box of the README ("What runs"), one phase per line; `run` owns everything around it
(preflight, placement, actors, tracking, saving, faults). What a run records of its config (the resolved config of
each start, the settings a resume must keep) is `config_record`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from tqdm import trange

from clinical_rl.rl.batch import Group, RolloutBatch, shard_rows
from clinical_rl.rl.checkpoint import Checkpoint, DriverState, latest_checkpoint, restore_trainers, save_checkpoint
from clinical_rl.config import AlgoConfig, RunConfig
from clinical_rl.data.cases import Case
from clinical_rl.data.rl_data import load_rl_cases
from clinical_rl.rl.config_record import check_resume, protected_settings, record_config, settings_hash
from clinical_rl.rl.dynamic_sampling import collect
from clinical_rl.rl.experience import experience_metrics, make_experience
from clinical_rl.rl.reward_metrics import reward_metrics
from clinical_rl.rl.rollouts import rollout_round, training_batch
from clinical_rl.models import check_model_dir
from clinical_rl.launch.cluster import connect_ray, shutdown_ray, with_cluster_shape
from clinical_rl.launch.layout import check_memory
from clinical_rl.launch.placement import create_placement_group, format_plan, plan_placement
from clinical_rl.rewards.audit import AuditPair, live_audit, load_pairs
from clinical_rl.rewards.base import load_reward_class
from clinical_rl.rewards.guard import score_on_actors
from clinical_rl.rl.faults import redo_on_restart, stops_the_run
from clinical_rl.rl.roles import Roles, start_roles, stop_roles
from clinical_rl.tracking import PhaseTimer, Tracker

log = logging.getLogger(__name__)
TokenScores = tuple[Tensor | None, Tensor | None, Tensor | None]  # old-policy logp, reference logp, values: (B, T)


@dataclass(frozen=True)
class RunResult:
    """What `run` leaves: the final policy, where tracking went, every step's metrics."""

    policy_dir: Path  # final policy, HF format
    tracking: str  # W&B run directory (offline) or URL
    history: list[dict[str, float]]  # metrics of every step


def rl_step(cfg: RunConfig, roles: Roles, cases: list[Case], step: int,
            more_cases: Callable[[int], list[Case]] | None = None) -> dict[str, float]:
    """One RL step: generate -> reward (-> refill, with dynamic sampling) -> logprobs/values -> advantages -> update
    -> weight sync. `more_cases(k)`: k further cases for dynamic sampling's refill rounds."""
    timer = PhaseTimer()
    with timer("step"):
        round_of = partial(rollout_round, cfg, roles, timer)

        def refill(k: int) -> list[Group]:
            if more_cases is None:
                raise ValueError("algo.dynamic_sampling refills from further cases: pass more_cases")
            return round_of(more_cases(k))

        collected = collect(len(cases), lambda _: round_of(cases), refill, cfg.algo.dynamic_sampling)
        roles.engines_done()
        batch, results = training_batch(roles, collected.kept)
        with timer("logprobs"):
            old_logp, ref_logp, values = score_tokens(roles, batch, cfg.algo.scores_old_policy)
        with timer("advantages"):
            exp = make_experience(cfg.algo, batch, results, old_logp, ref_logp, values, cfg.reward.max_failed_frac,
                                  cfg.rollout.max_new_tokens)
        with timer("train"):
            train_metrics = ppo_update(cfg.algo, roles, exp, seed=cfg.seed + step)
        with timer("sync"):
            roles.sync_weights()
    return {
        **reward_metrics(collected.scored),
        **experience_metrics(exp),
        **collected.metrics,
        **train_metrics,
        "perf/rollout_tokens_per_s": collected.response_tokens / timer.seconds["generate"],
        **timer.metrics(),
    }


def score_tokens(roles: Roles, batch: RolloutBatch, old_policy: bool) -> TokenScores:
    """Old-policy logprobs (if `old_policy`), reference logprobs (if there is a reference) and critic values (if
    there is a critic), (B, T) each, else None; concurrently where `roles.overlap`."""
    import ray

    batch_ref = ray.put(batch)
    calls = {
        "old": (lambda: _sharded_call(roles.policy, "logprobs", batch)) if old_policy else None,
        "ref": (lambda: [roles.reference.logprobs.remote(batch_ref)]) if roles.reference else None,
        "values": (lambda: _sharded_call(roles.critic, "values", batch)) if roles.critic else None,
    }
    wanted = {name: call for name, call in calls.items() if call is not None}
    parts = dict(zip(wanted, _run_phase(roles, list(wanted.values()))))
    return tuple(_cat(parts[name]) if name in parts else None for name in calls)  # type: ignore[return-value]


def _run_phase(roles: Roles, calls: list[Callable[[], list]]) -> list[list]:
    """Each call submits remote work and returns its refs; all run at once, or one after another on CPU."""
    import ray

    from ray.exceptions import GetTimeoutError

    try:
        if roles.overlap:
            refs = [call() for call in calls]
            return [ray.get(r, timeout=roles.trainer_timeout_s) for r in refs]
        return [ray.get(call(), timeout=roles.trainer_timeout_s) for call in calls]
    except GetTimeoutError:
        raise TimeoutError(f"a trainer call gave no answer within {roles.trainer_timeout_s:.0f}s "
                           "(policy/critic.timeout_s): taken as hung") from None


def _sharded_call(ranks: list, method: str, batch: RolloutBatch) -> list:
    """Each data-parallel rank scores its own rows (every ZeRO-3 rank must run the same forwards)."""
    import ray

    shards = [batch.select(shard_rows(len(batch), r, len(ranks))) for r in range(len(ranks))]
    return [getattr(rank, method).remote(ray.put(shard)) for rank, shard in zip(ranks, shards)]


def _cat(parts: list[Tensor]) -> Tensor:
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def ppo_update(algo: AlgoConfig, roles: Roles, exp, seed: int) -> dict[str, float]:
    """`ppo_epochs` passes of shuffled minibatches; policy and critic step on each (concurrently where
    `roles.overlap`)."""
    import ray

    exp_ref = ray.put(exp)
    generator = torch.Generator().manual_seed(seed)
    per_minibatch: list[dict[str, float]] = []
    for _ in range(algo.ppo_epochs):
        for index in torch.randperm(len(exp.rollout), generator=generator).split(algo.minibatch_size):
            calls = [lambda group=group: [rank.update.remote(exp_ref, index) for rank in group]
                     for group in (roles.policy, roles.critic) if group]
            results = _run_phase(roles, calls)
            merged = {k: v for ranks in results for k, v in ranks[0].items()}  # rank 0 of the policy and the critic
            per_minibatch.append(merged)
    keys = per_minibatch[0].keys()
    return {k: sum(m[k] for m in per_minibatch) / len(per_minibatch) for k in keys}


class CaseSampler:
    """Shuffled passes over the cases, deterministic by seed."""

    def __init__(self, cases: list[Case], batch_size: int, seed: int) -> None:
        self.cases, self.batch_size = cases, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> list[Case]:
        """The next `batch_size` cases; a new shuffled pass starts where the last one runs out."""
        return self.take(self.batch_size)

    def take(self, k: int) -> list[Case]:
        """The next `k` cases of the same order (dynamic sampling's refills draw from it too)."""
        while len(self.order) < k:
            self.order += torch.randperm(len(self.cases), generator=self.generator).tolist()
        rows, self.order = self.order[:k], self.order[k:]
        return [self.cases[i] for i in rows]

    def state_dict(self) -> dict:
        """Where the order stands (JSON-able): the case count, the cases left in this pass, the generator."""
        return {"num_cases": len(self.cases), "order": self.order, "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state_dict` left off; the cases must be the same list the state was taken over."""
        if state["num_cases"] != len(self.cases):
            raise ValueError(f"the checkpoint's data order covers {state['num_cases']} cases, the data now has "
                             f"{len(self.cases)}: data.* changed since the checkpoint (set resume=false to start over)")
        self.order = list(state["order"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


def preflight(cfg: RunConfig) -> tuple[Path, Path, list[Case], list[AuditPair]]:
    """Fail fast, before any actor starts: the settings a resume must keep, model directories, reward class, audit
    pairs, data.

    Raises:
        ValueError: a resume that would change protected settings (`config_record.check_resume`), a bad reward
            class, audit pairs or data file.
        FileNotFoundError: a missing model directory or data file, or `checkpoints/latest` naming a checkpoint
            without its state.json.
    """
    if cfg.resume:
        check_resume(cfg, latest_checkpoint(cfg.output_dir))
    model_path = check_model_dir(cfg.model.path, "model.path")
    critic_path = check_model_dir(cfg.critic.init_from, "critic.init_from") if cfg.critic.init_from else model_path
    load_reward_class(cfg.reward.cls)
    if cfg.reward.judge_engine is not None:
        check_model_dir(cfg.reward.judge_engine.model, "reward.judge_engine.model")
    audit_pairs: list[AuditPair] = []
    if cfg.reward.audit is not None:
        try:
            audit_pairs = load_pairs(cfg.reward.audit.pairs)
        except ValueError as err:
            raise ValueError(f"reward.audit.pairs: {err}") from None
    cases = load_rl_cases(cfg.data, cfg.seed, chain=cfg.env is not None)
    return model_path, critic_path, cases, audit_pairs


def resume(roles: Roles, checkpoint: Checkpoint, sampler: CaseSampler, tracker: Tracker) -> int:
    """Trainers, engines, data order and metric history as `checkpoint` left them; returns the next step."""
    restore_trainers(roles, checkpoint)
    sampler.load_state_dict(checkpoint.state.sampler)
    tracker.restore(checkpoint.state.history)
    print(f"resumed from {checkpoint.directory} (step {checkpoint.state.step})", flush=True)
    return checkpoint.state.step + 1


def run(cfg: RunConfig) -> RunResult:
    """Preflight, check the memory plan, place and start the roles, resume from the latest checkpoint if any, record
    the resolved config, run the RL steps up to `cfg.steps` (checkpointing every `save_every`), save the final policy.

    Raises ValueError (bad input, a layout that does not fit, a resume that would change protected settings),
    TimeoutError (the placement group or the actors not ready in time) and RunStopped (a trainer lost; the message
    says how to resume)."""
    from ray.util.placement_group import remove_placement_group

    model_path, critic_path, cases, audit_pairs = preflight(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = protected_settings(cfg)
    started_ray = connect_ray(cfg.ray)
    pg, roles = None, None
    try:
        check_memory(with_cluster_shape(cfg))  # before any actor starts, against the cluster joined
        plan = plan_placement(cfg)
        pg, nodes = create_placement_group(plan, cfg.placement.ready_timeout_s)
        print(format_plan(plan, nodes), flush=True)
        roles = start_roles(cfg, plan, pg, nodes, model_path, critic_path)
        checkpoint = latest_checkpoint(out) if cfg.resume else None
        sampler = CaseSampler(cases, cfg.algo.rollout_batch_size, cfg.seed)
        tracker = Tracker(cfg.tracking, out, cfg.model_dump(mode="json"),
                          resume_id=checkpoint.state.wandb_id if checkpoint else None,
                          metrics_file=out / "metrics.jsonl")
        first = 1
        if checkpoint is not None:
            first = resume(roles, checkpoint, sampler, tracker)
        # Only now: placement, model loading and the checkpoint restore are where a run fails to start, and a run
        # that never started must not stand beside (or over) the config of the run that made the checkpoints.
        recorded = record_config(out, cfg)
        if recorded is not None:
            print(f"resolved config: {recorded}", flush=True)
        for step in trange(first, cfg.steps + 1, initial=first - 1, total=cfg.steps, desc="ppo", unit="step"):
            step_cases = sampler.next()  # drawn once: a redone step trains on the same prompts
            with stops_the_run(roles, step, out, cfg.save_every):
                metrics = redo_on_restart(roles, step, partial(rl_step, cfg, roles, step_cases, step, sampler.take))
                if cfg.reward.audit is not None and step % cfg.reward.audit.every == 0:
                    score = partial(score_on_actors, roles.rewards, cfg=cfg.reward)
                    metrics |= redo_on_restart(roles, step, partial(live_audit, audit_pairs, score, cfg.reward, step))
            tracker.log(metrics, step)
            if cfg.save_every and step % cfg.save_every == 0:
                state = DriverState(step, sampler.state_dict(), tracker.history, tracker.run_id, {}, settings,
                                    settings_hash(settings))
                save_checkpoint(out, roles, state, cfg.keep_checkpoints)
        policy_dir = roles.save_policy(out / "policy")
        tracker.finish()
        return RunResult(policy_dir=policy_dir, tracking=tracker.location, history=tracker.history)
    finally:
        if roles is not None:
            stop_roles(roles)
        if pg is not None:
            remove_placement_group(pg)
        if started_ray:
            shutdown_ray()
