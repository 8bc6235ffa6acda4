"""Roles -> one Ray placement group with a bundle per actor instance, and a printable plan.

`plan_placement` is pure (no Ray): `clinical-rl plan` prints it before anything starts. With
`placement.colocate`, the critic and reference of rank i share the policy rank i's bundle (and GPU). A vLLM engine
with tensor parallelism gets one bundle of `tensor_parallel_size` GPUs: a bundle always lands on one node, which is
where vLLM needs its TP workers. `launch.layout` lays the bundles out on the configured nodes and GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from clinical_rl.config import RunConfig
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
    """One Ray placement group: its bundles (resources each), the role instances in them, the strategy."""

    bundles: list[dict[str, float]]
    slots: list[Slot]
    strategy: str
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> labels its node must carry

    def label_selectors(self) -> list[dict[str, str]]:
        """Per bundle, the node labels of its first member's role (Ray's `bundle_label_selector`)."""
        first = {}
        for slot in self.slots:
            first.setdefault(slot.bundle, slot.role)
        return [dict(self.node_labels.get(first[b], {})) for b in range(len(self.bundles))]

    def of(self, role: str) -> list[Slot]:
        """The slots of `role`, in index order."""
        return [s for s in self.slots if s.role == role]


def plan_placement(cfg: RunConfig) -> PlacementPlan:
    """Bundles and slots for every role instance the config asks for."""
    device = Device(cfg.device)
    bundles: list[dict[str, float]] = []
    slots: list[Slot] = []

    def add(role: str, index: int, num_cpus: float, num_gpus: int = 1) -> int:
        bundles.append(device.bundle(num_cpus, num_gpus) if num_gpus else {"CPU": num_cpus})
        slots.append(Slot(role, index, len(bundles) - 1, num_cpus, device.actor_gpus(num_gpus) if num_gpus else 0.0))
        return len(bundles) - 1

    tp = cfg.rollout.tensor_parallel_size
    if cfg.placement.colocate_engines and tp > 1:
        raise ValueError(f"placement.colocate_engines needs rollout.tensor_parallel_size 1 (got {tp}): engine i "
                         "shares policy rank i's single GPU")
    if not cfg.placement.colocate_engines:
        for i in range(cfg.rollout.num_engines):
            add("rollout", i, cfg.rollout.num_cpus, tp)
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
        add("reward", i, cfg.reward.num_cpus, num_gpus=0)
    if cfg.reward.judge_engine is not None:
        add("judge", 0, cfg.reward.judge_engine.num_cpus, cfg.reward.judge_engine.tensor_parallel_size)
    return PlacementPlan(bundles=bundles, slots=slots, strategy=cfg.placement.strategy,
                         node_labels=cfg.placement.node_labels)


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


def create_placement_group(plan: PlacementPlan, timeout_s: float = 600.0) -> tuple[Any, list[str]]:
    """Reserve the bundles; returns the group and the node id of each bundle.

    Raises TimeoutError with the plan and the cluster's resources when the group is not placed within `timeout_s`
    (the group is removed: Ray would otherwise keep waiting for it)."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    selectors = plan.label_selectors()
    pg = placement_group(plan.bundles, strategy=plan.strategy,
                         bundle_label_selector=selectors if any(selectors) else None)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise TimeoutError(
            f"placement group not placed within {timeout_s:.0f}s (placement.ready_timeout_s); cluster resources "
            f"{ray.cluster_resources()}\n" + format_plan(plan)
        )
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    return pg, [nodes[b] for b in range(len(plan.bundles))]


def node_address_and_free_port() -> tuple[str, int]:
    """Run inside a bundle (as a Ray task): the node's IP and a free port there, for a rank-0 rendezvous."""
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def plan_group(role: str, count: int, num_cpus: float, device: Device, num_gpus: float = 1.0,
               strategy: str = "PACK") -> PlacementPlan:
    """`count` instances of one role, a bundle each (evaluation or synthesis engines, SFT ranks)."""
    bundles = [device.bundle(num_cpus, num_gpus) for _ in range(count)]
    slots = [Slot(role, i, i, num_cpus, device.actor_gpus(num_gpus)) for i in range(count)]
    return PlacementPlan(bundles=bundles, slots=slots, strategy=strategy)
