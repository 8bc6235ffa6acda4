"""Roles -> one Ray placement group with a bundle per actor instance, and a printable plan.

`plan_placement` is pure (no Ray): `clinical-rl plan` prints it before anything starts. With
`placement.colocate`, the critic and reference of rank i share the policy rank i's bundle (and GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from clinical_rl.config import RayConfig, RunConfig
from clinical_rl.device import Device


@dataclass(frozen=True)
class Slot:
    """One actor instance: its role, its index within the role, its bundle and its share of that bundle."""

    role: str  # rollout | policy | critic | reference | reward | judge
    index: int
    bundle: int
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class PlacementPlan:
    bundles: list[dict[str, float]]
    slots: list[Slot]
    strategy: str

    def of(self, role: str) -> list[Slot]:
        return [s for s in self.slots if s.role == role]


def plan_placement(cfg: RunConfig) -> PlacementPlan:
    """Bundles and slots for every role instance the config asks for."""
    device = Device(cfg.device)
    bundles: list[dict[str, float]] = []
    slots: list[Slot] = []

    def add(role: str, index: int, num_cpus: float, gpu: bool = True) -> int:
        bundles.append(device.bundle(num_cpus) if gpu else {"CPU": num_cpus})
        slots.append(Slot(role, index, len(bundles) - 1, num_cpus, device.actor_gpus() if gpu else 0.0))
        return len(bundles) - 1

    if not cfg.placement.colocate_engines:
        for i in range(cfg.rollout.num_engines):
            add("rollout", i, cfg.rollout.num_cpus)
    trainer_roles = [("policy", cfg.policy.world_size, cfg.policy.num_cpus)]
    if cfg.algo.use_critic:
        trainer_roles.append(("critic", cfg.critic.world_size, cfg.critic.num_cpus))
    if cfg.placement.colocate:
        _colocate(cfg, device, bundles, slots, [r for r, _, _ in trainer_roles])
    else:
        for role, world, cpus in trainer_roles:
            for rank in range(world):
                add(role, rank, cpus)
        if cfg.algo.use_reference:
            add("reference", 0, cfg.reference.num_cpus)
    if cfg.placement.colocate_engines:
        for policy_slot in [sl for sl in slots if sl.role == "policy"]:
            _join_bundle(device, bundles, slots, Slot("rollout", policy_slot.index, policy_slot.bundle,
                                                      cfg.rollout.num_cpus, 0.0))
    for i in range(cfg.reward.num_actors):
        add("reward", i, cfg.reward.num_cpus, gpu=False)
    if cfg.reward.judge_engine is not None:
        add("judge", 0, cfg.reward.judge_engine.num_cpus)
    return PlacementPlan(bundles=bundles, slots=slots, strategy=cfg.placement.strategy)


def _colocate(cfg: RunConfig, device: Device, bundles: list[dict[str, float]], slots: list[Slot], roles: list[str]) -> None:
    """Policy rank i, critic rank i and (on rank 0) the reference share one bundle and split its GPU."""
    for rank in range(cfg.policy.world_size):
        members = roles + (["reference"] if rank == 0 and cfg.algo.use_reference else [])
        cpus = {"policy": cfg.policy.num_cpus, "critic": cfg.critic.num_cpus, "reference": cfg.reference.num_cpus}
        bundles.append(device.bundle(sum(cpus[r] for r in members)))
        for role in members:
            slots.append(Slot(role, rank, len(bundles) - 1, cpus[role], device.actor_gpus(1.0 / len(members))))


def _join_bundle(device: Device, bundles: list[dict[str, float]], slots: list[Slot], member: Slot) -> None:
    """Add `member` to its bundle: the bundle grows by its CPUs and its members split the bundle's GPU evenly."""
    bundles[member.bundle] = device.bundle(bundles[member.bundle]["CPU"] + member.num_cpus)
    slots.append(member)
    sharing = [i for i, sl in enumerate(slots) if sl.bundle == member.bundle]
    for i in sharing:
        slots[i] = replace(slots[i], num_gpus=device.actor_gpus(1.0 / len(sharing)))


def format_plan(plan: PlacementPlan, bundle_nodes: list[str] | None = None) -> str:
    """A table of bundle -> roles (-> node once the group is placed)."""
    lines = [f"placement group: {len(plan.bundles)} bundles, strategy {plan.strategy}"]
    for b, resources in enumerate(plan.bundles):
        members = ", ".join(f"{s.role}[{s.index}]" for s in plan.slots if s.bundle == b)
        node = f"  node {bundle_nodes[b][:12]}" if bundle_nodes else ""
        res = ", ".join(f"{k}={v:g}" for k, v in resources.items())
        lines.append(f"  bundle {b:>2}  {{{res}}}  {members}{node}")
    return "\n".join(lines)


def create_placement_group(plan: PlacementPlan, timeout_s: float = 120.0) -> tuple[Any, list[str]]:
    """Reserve the bundles; returns the group and the node id of each bundle. Fails with the plan if unplaceable."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    pg = placement_group(plan.bundles, strategy=plan.strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(
            f"placement group not placed within {timeout_s:.0f}s; cluster resources {ray.cluster_resources()}\n"
            + format_plan(plan)
        )
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    return pg, [nodes[b] for b in range(len(plan.bundles))]


def actor_options(slot: Slot, pg: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`.options(...)` that pins an actor to its bundle."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    options: dict[str, Any] = {
        "num_cpus": slot.num_cpus,
        "num_gpus": slot.num_gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=slot.bundle),
    }
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options


def node_address_and_free_port() -> tuple[str, int]:
    """Run inside a bundle (as a Ray task): the node's IP and a free port there, for a rank-0 rendezvous."""
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def connect_ray(cfg: RayConfig) -> bool:
    """Join `cfg.address`, or start a local cluster; True when this call started Ray (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    # Processes of a cluster this call starts inherit the environment: vLLM and DeepSpeed read their levels there.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", cfg.log_level)
    os.environ.setdefault("CLINICAL_RL_LOG_LEVEL", cfg.log_level)
    ray.init(
        address=cfg.address,
        num_cpus=cfg.num_cpus,
        object_store_memory=None if cfg.address else int(cfg.object_store_gib * 1024**3),
        include_dashboard=False,
        logging_level=cfg.log_level,
    )
    return True
