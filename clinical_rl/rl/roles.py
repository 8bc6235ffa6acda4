"""The handles of every role of an RL run: started from the placement plan, connected for weight sync, stopped.

Actors are started through the launch layer (`clinical_rl.launch`); this module knows which roles an RL run has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinical_rl.actors.critic import CriticTrainer
from clinical_rl.actors.policy import PolicyTrainer
from clinical_rl.actors.reference import ReferenceModel
from clinical_rl.config import RunConfig
from clinical_rl.device import Device
from clinical_rl.launch.actors import address_on, kill_all, start_actor, trainer_group, wait_ready
from clinical_rl.launch.engines import cpu_bindings, start_engines, stop_engines
from clinical_rl.launch.placement import PlacementPlan
from clinical_rl.models import check_model_dir
from clinical_rl.rewards.guard import RewardActor

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 1800.0  # model loads of every role, concurrently


@dataclass
class Roles:
    """Handles of every actor of a run, plus the tokenizer the driver renders prompts with."""

    tokenizer: Any
    engines: list[Any]
    policy: list[Any]  # one handle per data-parallel rank
    critic: list[Any]  # empty without a critic (GRPO)
    reference: Any | None  # None without a KL penalty
    rewards: list[Any]
    judge: Any | None = None  # in-cluster judge engine (reward.judge_engine)
    # Whether the trainer roles may compute at the same time. On GPU each has its own device; on CPU they share the
    # node's cores, and two processes of `cores` threads each run slower together than one after the other.
    overlap: bool = True
    sleep_engines: bool = False  # placement.colocate_engines: engines sleep while the colocated trainers run
    update_info: dict[str, list] | None = None  # what a weight push carries, fixed after the first
    bucket_mb: int = 64  # rollout.weight_sync_bucket_mb
    policy_rank0: Any = None  # its Slot: the node of the transfer group's rendezvous
    pg: Any = None
    trainer_timeout_s: float = 3600.0  # deadline of one trainer call (policy.timeout_s)
    engine_tp: int = 1  # rollout.tensor_parallel_size: worker processes per engine

    def connect_weight_sync(self) -> None:
        """A fresh transfer group: trainer rank 0 is its rank 0, engine i's tensor-parallel workers ranks
        1 + i·tp … i·tp + tp (vLLM adds each worker's TP rank to the offset). Called at start and again after an
        engine restarted (the old group lost a member)."""
        import ray

        address, port = address_on(self.policy_rank0, self.pg)
        world_size = 1 + len(self.engines) * self.engine_tp
        refs = [self.policy[0].init_weight_sync.remote(address, port, world_size, self.bucket_mb)]
        refs += [e.init_weight_sync.remote(address, port, 1 + i * self.engine_tp, world_size)
                 for i, e in enumerate(self.engines)]
        ray.get(refs, timeout=self.trainer_timeout_s)

    def sync_weights(self) -> None:
        """Push the policy's weights into every engine: trainer broadcast and engine receive run concurrently."""
        import ray

        if self.update_info is None:
            self.update_info = ray.get(self.policy[0].weight_update_info.remote())
        if self.sleep_engines:
            ray.get([engine.wake_up.remote(["weights"]) for engine in self.engines], timeout=self.trainer_timeout_s)
        refs = [rank.broadcast_weights.remote() for rank in self.policy]
        refs += [engine.update_weights.remote(self.update_info) for engine in self.engines]
        ray.get(refs, timeout=self.trainer_timeout_s)
        if self.sleep_engines:
            ray.get([engine.wake_up.remote(["kv_cache"]) for engine in self.engines], timeout=self.trainer_timeout_s)

    def name_of(self, actor_id: str | None) -> str:
        """'policy rank 1', 'rollout engine 0', … for a Ray actor id (hex); 'an actor' when none matches."""
        named = {"rollout engine": self.engines, "policy rank": self.policy, "critic rank": self.critic,
                 "reward actor": self.rewards, "reference": _present(self.reference), "judge": _present(self.judge)}
        for label, handles in named.items():
            for i, handle in enumerate(handles):
                if handle._actor_id.hex() == actor_id:
                    return f"{label} {i}"
        return "an actor"

    def engines_done(self) -> None:
        """After a rollout: colocated engines go to sleep so the trainers get the GPU memory."""
        import ray

        if self.sleep_engines:
            ray.get([engine.sleep.remote() for engine in self.engines], timeout=self.trainer_timeout_s)

    def save_policy(self, out_dir: Path) -> Path:
        """HF-format policy (collective over the ranks; rank 0 writes)."""
        import ray

        ray.get([rank.save_pretrained.remote(str(out_dir)) for rank in self.policy], timeout=self.trainer_timeout_s)
        return out_dir


def start_roles(cfg: RunConfig, plan: PlacementPlan, pg: Any, bundle_nodes: list[str], model_path: Path,
                critic_path: Path) -> Roles:
    """Create all actors at once (their model loads overlap), wait until ready, then connect weight sync."""
    from transformers import AutoTokenizer

    device = Device(cfg.device)
    bindings = cpu_bindings([*plan.of("rollout"), *plan.of("judge")], pg, bundle_nodes, device)
    engines = start_engines(cfg.rollout, model_path, plan.of("rollout"), pg, bindings, device=device,
                            dtype=cfg.model.dtype, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code,
                            sleep_mode=cfg.placement.colocate_engines)
    common = {"minibatch_size": cfg.algo.minibatch_size, "seed": cfg.seed}
    policy = trainer_group(
        PolicyTrainer, plan.of("policy"), pg, cfg.model, cfg.policy, device, model_path=str(model_path),
        temperature=cfg.rollout.temperature, kl_coef=cfg.algo.kl_coef, kl_estimator=cfg.algo.kl_estimator,
        kl_in_loss=cfg.algo.kl_in == "loss" and cfg.algo.use_reference, tis_cap=cfg.algo.tis_cap,
        loss_agg_mode=cfg.loss_agg_mode, loss_norm_len=cfg.rollout.max_new_tokens, **common,
    )
    critic = trainer_group(
        CriticTrainer, plan.of("critic"), pg, cfg.model, cfg.critic, device, model_path=str(critic_path), **common
    )
    reference = next((
        start_actor(ReferenceModel, slot, pg, cfg.model, cfg.reference, device, model_path=str(model_path),
                    temperature=cfg.rollout.temperature, seed=cfg.seed)
        for slot in plan.of("reference")
    ), None)
    rewards = [start_actor(RewardActor, slot, pg, cfg.reward, max_restarts=cfg.reward.max_restarts)
               for slot in plan.of("reward")]
    judge = None
    if cfg.reward.judge_engine is not None:
        judge_cfg = cfg.reward.judge_engine
        (judge,) = start_engines(judge_cfg, check_model_dir(judge_cfg.model, "reward.judge_engine.model"),
                                 plan.of("judge"), pg, bindings, device=device, dtype=cfg.model.dtype,
                                 seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code, name=judge_cfg.name)
    wait_ready([*engines, *policy, *critic, *_present(reference, judge), *rewards], "the run's actors",
               READY_TIMEOUT_S)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    roles = Roles(tokenizer, engines, policy, critic, reference, rewards, judge, overlap=device.is_gpu,
                  sleep_engines=cfg.placement.colocate_engines, bucket_mb=cfg.rollout.weight_sync_bucket_mb,
                  policy_rank0=plan.of("policy")[0], pg=pg,
                  trainer_timeout_s=max(cfg.policy.timeout_s, cfg.critic.timeout_s),
                  engine_tp=cfg.rollout.tensor_parallel_size)
    roles.connect_weight_sync()
    return roles


def _present(*actors: Any | None) -> list[Any]:
    """The actors of optional roles that were started."""
    return [a for a in actors if a is not None]


def stop_roles(roles: Roles) -> None:
    """Shut the engines down, then kill every actor."""
    stop_engines([*roles.engines, *_present(roles.judge)])
    kill_all([*roles.policy, *roles.critic, *_present(roles.reference), *roles.rewards])
