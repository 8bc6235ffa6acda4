"""Start every role as a Ray actor on its bundle, connect weight sync, and stop them again.

The actor classes are plain; this is where they become Ray actors (`ray.remote(Cls).options(...)`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinical_rl.actors.critic import CriticTrainer
from clinical_rl.actors.policy import PolicyTrainer
from clinical_rl.actors.reference import ReferenceModel
from clinical_rl.actors.reward import RewardActor
from clinical_rl.actors.rollout import RolloutEngine
from clinical_rl.actors.trainer_rank import GroupRank
from clinical_rl.config import RolloutConfig, RunConfig
from clinical_rl.models import check_model_dir
from clinical_rl.device import Device
from clinical_rl.placement import PlacementPlan, Slot, actor_options, node_address_and_free_port

log = logging.getLogger(__name__)


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

    def sync_weights(self) -> None:
        """Push the policy's weights into every engine: trainer broadcast and engine receive run concurrently."""
        import ray

        if self.update_info is None:
            self.update_info = ray.get(self.policy[0].weight_update_info.remote())
        if self.sleep_engines:
            ray.get([engine.wake_up.remote(["weights"]) for engine in self.engines])
        refs = [rank.broadcast_weights.remote() for rank in self.policy]
        refs += [engine.update_weights.remote(self.update_info) for engine in self.engines]
        ray.get(refs)
        if self.sleep_engines:
            ray.get([engine.wake_up.remote(["kv_cache"]) for engine in self.engines])

    def engines_done(self) -> None:
        """After a rollout: colocated engines go to sleep so the trainers get the GPU memory."""
        import ray

        if self.sleep_engines:
            ray.get([engine.sleep.remote() for engine in self.engines])

    def save_policy(self, out_dir: Path) -> Path:
        """HF-format policy (collective over the ranks; rank 0 writes)."""
        import ray

        ray.get([rank.save_pretrained.remote(str(out_dir)) for rank in self.policy])
        return out_dir


def start_roles(cfg: RunConfig, plan: PlacementPlan, pg: Any, model_path: Path, critic_path: Path) -> Roles:
    """Create all actors at once (their model loads overlap), wait until ready, then connect weight sync."""
    import ray
    from transformers import AutoTokenizer

    device = Device(cfg.device)
    engines = [
        ray.remote(RolloutEngine)
        .options(**actor_options(slot, pg))
        .remote(str(model_path), cfg.rollout, device, cfg.model.dtype, cfg.seed + slot.index,
                cfg.model.trust_remote_code, sleep_mode=cfg.placement.colocate_engines)
        for slot in plan.of("rollout")
    ]
    common = {"minibatch_size": cfg.algo.minibatch_size, "seed": cfg.seed}
    policy = trainer_group(
        PolicyTrainer, plan.of("policy"), pg, cfg.model, cfg.policy, device, model_path=str(model_path),
        temperature=cfg.rollout.temperature, kl_coef=cfg.algo.kl_coef, kl_estimator=cfg.algo.kl_estimator,
        kl_in_loss=cfg.algo.kl_in == "loss" and cfg.algo.use_reference, tis_cap=cfg.algo.tis_cap, **common,
    )
    critic = trainer_group(
        CriticTrainer, plan.of("critic"), pg, cfg.model, cfg.critic, device, model_path=str(critic_path), **common
    )
    reference = next((
        ray.remote(ReferenceModel)
        .options(**actor_options(slot, pg))
        .remote(cfg.model, cfg.reference, device, model_path=str(model_path), temperature=cfg.rollout.temperature,
                seed=cfg.seed)
        for slot in plan.of("reference")
    ), None)
    rewards = [ray.remote(RewardActor).options(**actor_options(s, pg)).remote(cfg.reward) for s in plan.of("reward")]
    judge = _start_judge(cfg, plan, pg, device)
    ray.get([a.ready.remote() for a in [*engines, *policy, *critic, *_present(reference, judge), *rewards]])
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    roles = Roles(tokenizer, engines, policy, critic, reference, rewards, judge, overlap=device.is_gpu,
                  sleep_engines=cfg.placement.colocate_engines)
    _connect_weight_sync(roles, plan.of("policy")[0], pg, cfg.rollout.weight_sync_bucket_mb)
    return roles


def _start_judge(cfg: RunConfig, plan: PlacementPlan, pg: Any, device: Device) -> Any | None:
    """The judge engine, named so that the reward actors' `ray_engine` judge backend finds it."""
    import ray

    judge = cfg.reward.judge_engine
    if judge is None:
        return None
    (slot,) = plan.of("judge")
    engine_cfg = RolloutConfig(num_cpus=judge.num_cpus, max_model_len=judge.max_model_len,
                               kv_cache_gib=judge.kv_cache_gib, gpu_memory_utilization=judge.gpu_memory_utilization)
    model = check_model_dir(judge.model, "reward.judge_engine.model")
    return (
        ray.remote(RolloutEngine)
        .options(name=judge.name, **actor_options(slot, pg))
        .remote(str(model), engine_cfg, device, judge.dtype, cfg.seed, cfg.model.trust_remote_code)
    )


def _present(*actors: Any | None) -> list[Any]:
    """The actors of optional roles that were started."""
    return [a for a in actors if a is not None]


def trainer_group(cls: type, slots: list[Slot], pg: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """One actor per data-parallel rank; rank 0's node hosts the torch.distributed rendezvous."""
    import ray

    if not slots:
        return []
    address, port = _address_on(slots[0], pg)
    return [
        ray.remote(cls)
        .options(**actor_options(slot, pg))
        .remote(*args, group=GroupRank(slot.index, len(slots), address, port), **kwargs)
        for slot in slots
    ]


def _address_on(slot: Slot, pg: Any) -> tuple[str, int]:
    """IP and a free port of the node that holds `slot`'s bundle."""
    import ray

    task = ray.remote(num_cpus=0)(node_address_and_free_port)
    options = actor_options(slot, pg)
    options.update(num_cpus=0, num_gpus=0)
    return ray.get(task.options(**options).remote())


def _connect_weight_sync(roles: Roles, policy_rank0: Slot, pg: Any, bucket_mb: int) -> None:
    """Trainer rank 0 is rank 0 of the transfer group; engine i's workers follow (one worker per engine)."""
    import ray

    address, port = _address_on(policy_rank0, pg)
    world_size = 1 + len(roles.engines)
    refs = [roles.policy[0].init_weight_sync.remote(address, port, world_size, bucket_mb)]
    refs += [e.init_weight_sync.remote(address, port, 1 + i, world_size) for i, e in enumerate(roles.engines)]
    ray.get(refs)


def stop_roles(roles: Roles) -> None:
    """Shut the engines down, then kill every actor.

    vLLM's engine-core and worker processes are children of the engine actor, not Ray workers: `ray.kill` alone
    would orphan them, so each engine first stops its own.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    engines = [*roles.engines, *([roles.judge] if roles.judge else [])]
    try:
        ray.get([engine.shutdown.remote() for engine in engines], timeout=60)
    except (GetTimeoutError, RayError) as err:  # still kill the actors below; say what may be left behind
        log.warning("vLLM engine shutdown failed (%s); its processes may outlive the run", err)
    for actor in [*engines, *roles.policy, *roles.critic, *_present(roles.reference), *roles.rewards]:
        ray.kill(actor)
