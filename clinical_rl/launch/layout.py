"""Where the placement group's bundles land on the configured cluster, and whether every GPU's memory suffices.

`check_memory(cfg)` is what a launcher calls before it starts anything; `clinical-rl plan` prints
`format_memory_plan`. The node layout follows Ray's placement strategies (docs/memory.md); node numbers are the
plan's own, Ray picks which machine is which. Memory per role instance comes from `launch.memory`.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinical_rl.config import PlacementConfig, RunConfig
from clinical_rl.config_base import EngineConfig
from clinical_rl.launch.memory import Estimate, RoleMemory, estimate_roles
from clinical_rl.launch.placement import PlacementPlan, Slot, plan_placement

PHASES = ("generate", "train")  # engines generate while trainers hold their states; then the reverse


def assign_nodes(bundles: list[dict[str, float]], strategy: str, cluster: PlacementConfig) -> list[int]:
    """Node of each bundle, as Ray's strategy places it (a bundle never spans nodes):

    STRICT_PACK every bundle on one node; PACK first fit in bundle order, filling node 0 before node 1;
    SPREAD each bundle on the node holding the fewest bundles so far; STRICT_SPREAD bundle i on its own node i.
    ValueError, naming the bundle, where Ray would wait forever for the group.
    """
    free = [{"GPU": float(cluster.gpus_per_node), "CPU": cluster.cpus_per_node or float("inf")}
            for _ in range(cluster.num_nodes)]
    if strategy == "STRICT_SPREAD" and len(bundles) > cluster.num_nodes:
        raise ValueError(f"STRICT_SPREAD puts each of the {len(bundles)} bundles on its own node but the cluster has "
                         f"{cluster.num_nodes} (placement.num_nodes); use PACK or SPREAD")
    nodes: list[int] = []
    for b, bundle in enumerate(bundles):
        order = {
            "STRICT_PACK": [0],
            "PACK": list(range(cluster.num_nodes)),
            "SPREAD": sorted(range(cluster.num_nodes), key=lambda n: (nodes.count(n), n)),
            "STRICT_SPREAD": [b],
        }[strategy]
        node = next((n for n in order if all(free[n].get(k, 0.0) >= v for k, v in bundle.items())), None)
        if node is None:
            where = "node 0 (STRICT_PACK)" if strategy == "STRICT_PACK" else f"any of the {cluster.num_nodes} nodes"
            gpus = f"{cluster.gpus_per_node} GPUs, " if "GPU" in bundle else ""
            raise ValueError(f"bundle {b} {bundle} does not fit on {where} ({gpus}{cluster.cpus_per_node or 'unchecked'}"
                             f" CPUs each, minus the bundles before it; the plan needs {_totals(bundles)}): Ray would "
                             "wait for the placement group forever. Set placement.num_nodes / gpus_per_node / "
                             "cpus_per_node to the cluster's shape, or change the layout")
        for k, v in bundle.items():
            free[node][k] -= v
        nodes.append(node)
    return nodes


@dataclass(frozen=True)
class DeviceMemory:
    """One GPU (or, with device=cpu, one node's host memory) and the role instances on it, GiB."""

    node: int
    gpu: int | None  # None: the node's host memory
    members: list[tuple[Slot, Estimate | None]]  # None: unknown (see MemoryPlan.roles.unknown)
    peak_gib: float  # the larger phase total: sum of the peaking members' peaks and the others' idle memory
    phase: str  # the phase at that peak
    capacity_gib: float | None  # None: not checked

    @property
    def known(self) -> bool:
        return all(estimate is not None for _, estimate in self.members)

    @property
    def short_gib(self) -> float:
        return max(0.0, self.peak_gib - self.capacity_gib) if self.capacity_gib is not None else 0.0


@dataclass(frozen=True)
class MemoryPlan:
    """The placement plan laid out on `placement.num_nodes` nodes, with the memory of every device."""

    placement: PlacementPlan
    bundle_nodes: list[int]
    bundle_gpus: list[list[int]]  # GPU indices on its node of each bundle ([] for CPU-only bundles)
    devices: list[DeviceMemory]
    roles: RoleMemory
    problems: list[str]  # why the layout cannot run; empty when it fits


def plan_memory(cfg: RunConfig) -> MemoryPlan:
    """Lay the bundles out and estimate every device; ValueError when Ray could not place the group."""
    plan = plan_placement(cfg)
    nodes = assign_nodes(plan.bundles, plan.strategy, cfg.placement)
    gpus = _gpu_indices(plan.bundles, nodes)
    roles = estimate_roles(cfg)
    devices: dict[tuple[int, int | None], list[tuple[Slot, Estimate | None]]] = {}
    for slot in plan.slots:
        if cfg.device == "gpu" and not gpus[slot.bundle]:
            continue  # a CPU-only actor (reward) on a GPU cluster: host memory is not planned
        for gpu in gpus[slot.bundle] or [None]:
            devices.setdefault((nodes[slot.bundle], gpu), []).append((slot, roles.estimates.get(slot.role)))
    capacity = cfg.placement.gpu_memory_gib if cfg.device == "gpu" else cfg.placement.host_memory_gib
    laid_out = [_device(node, gpu, members, capacity) for (node, gpu), members in sorted(devices.items(),
                key=lambda item: (item[0][0], -1 if item[0][1] is None else item[0][1]))]
    problems = [engine_problem(f"{s.role}[{s.index}] on {_where(d)}", _engine_config(s.role, cfg), e,
                               cfg.placement.gpu_memory_gib)
                for d in laid_out for s, e in d.members if e and e.min_kv_gib]
    problems = [p for p in problems if p] + [_short_message(d) for d in laid_out if d.short_gib > 0]
    return MemoryPlan(plan, nodes, gpus, laid_out, roles, problems)


def check_memory(cfg: RunConfig) -> MemoryPlan:
    """`plan_memory`, raising ValueError with every reason the layout cannot run (role, GPU, need, shortfall)."""
    memory = plan_memory(cfg)
    if memory.problems:
        raise ValueError("the layout does not fit:\n  " + "\n  ".join(memory.problems))
    return memory


@dataclass(frozen=True)
class NodeTotals:
    """What the layout put on one node: its GPUs, CPUs and memory need, GiB."""

    node: int
    gpus: int
    cpus: float
    memory_gib: float  # device=gpu: the sum of its GPUs' peaks; device=cpu: its host memory's peak
    largest_gib: float  # device=gpu: its fullest GPU's peak; device=cpu: memory_gib
    known: bool  # False: some member's memory is unknown, the figures are lower bounds


@dataclass(frozen=True)
class RunTotals:
    """Everything one PPO run holds at once: per resource over the run, and per node. GiB."""

    bundles: int
    gpus: int
    cpus: float
    gpu_memory_gib: float | None  # device=gpu: the sum of every GPU's peak; None on CPU
    host_memory_gib: float | None  # device=cpu: the sum of every node's host peak; None on GPU (not planned)
    nodes: list[NodeTotals]

    @property
    def known(self) -> bool:
        return all(n.known for n in self.nodes)


def run_totals(memory: MemoryPlan, cfg: RunConfig) -> RunTotals:
    """Sum the bundles and the devices' peaks per node and over the run. A GPU's peak is already the larger of
    its phases; summing GPUs adds peaks that may fall in different phases, so the run total is an upper bound."""
    nodes = []
    for node in sorted(set(memory.bundle_nodes)):
        bundles = [b for b, n in enumerate(memory.bundle_nodes) if n == node]
        devices = [d for d in memory.devices if d.node == node]
        peaks = [d.peak_gib for d in devices]
        nodes.append(NodeTotals(node, sum(len(memory.bundle_gpus[b]) for b in bundles),
                                sum(memory.placement.bundles[b]["CPU"] for b in bundles), sum(peaks),
                                max(peaks, default=0.0), all(d.known for d in devices)))
    memory_gib = sum(n.memory_gib for n in nodes)
    gpu = cfg.device == "gpu"
    return RunTotals(len(memory.placement.bundles), sum(n.gpus for n in nodes), sum(n.cpus for n in nodes),
                     memory_gib if gpu else None, None if gpu else memory_gib, nodes)


def format_totals(totals: RunTotals, cfg: RunConfig) -> list[str]:
    """The run's totals line, then one line per node (GPUs and CPUs of the configured ones, memory)."""
    gpu = cfg.device == "gpu"
    bound = "" if totals.known else " at least (some members' memory unknown)"
    memory = (f"GPU memory {totals.gpu_memory_gib:.1f} GiB{bound} (each GPU's peak, summed); host memory not "
              "planned on device=gpu" if gpu else f"host memory {totals.host_memory_gib:.1f} GiB{bound}")
    lines = [f"  totals: {totals.bundles} bundles on {len(totals.nodes)} node(s): "
             + (f"{totals.gpus} GPUs, " if gpu else "") + f"{totals.cpus:g} CPUs, {memory}"]
    of_cpus = f" of {cfg.placement.cpus_per_node:g}" if cfg.placement.cpus_per_node else ""
    for n in totals.nodes:
        at_least = "" if n.known else " at least"
        used = (f"{n.gpus} of {cfg.placement.gpus_per_node} GPUs, {n.cpus:g}{of_cpus} CPUs, GPU memory "
                f"{n.memory_gib:.1f} GiB{at_least} (fullest GPU {n.largest_gib:.1f})" if gpu else
                f"{n.cpus:g}{of_cpus} CPUs, host memory {n.memory_gib:.1f} GiB{at_least}")
        lines.append(f"    node {n.node}: {used}")
    return lines


def _gpu_indices(bundles: list[dict[str, float]], nodes: list[int]) -> list[list[int]]:
    """Ray hands a bundle's GPUs out of its node's in order: GPU indices per bundle."""
    used: dict[int, int] = {}
    out = []
    for bundle, node in zip(bundles, nodes, strict=True):
        count = int(bundle.get("GPU", 0))
        out.append(list(range(used.get(node, 0), used.get(node, 0) + count)))
        used[node] = used.get(node, 0) + count
    return out


def _totals(bundles: list[dict[str, float]]) -> str:
    gpus = sum(b.get("GPU", 0.0) for b in bundles)
    return (f"{gpus:g} GPUs, " if gpus else "") + f"{sum(b.get('CPU', 0.0) for b in bundles):g} CPUs"


def _device(node: int, gpu: int | None, members: list[tuple[Slot, Estimate | None]],
            capacity: float | None) -> DeviceMemory:
    """The device's peak over the phases: a member at its peak in its own phase (or always), idle otherwise.

    On a GPU the trainers of the train phase peak together (`Roles.overlap`); on a CPU node they take turns, so
    that phase peaks at its largest trainer with the others idle. Engines always generate together."""
    known = [e for _, e in members if e is not None]
    totals = {}
    for phase in PHASES:
        base = sum(e.peak_gib if e.phase is None else e.idle_gib for e in known)
        rises = [e.peak_gib - e.idle_gib for e in known if e.phase == phase]
        together = gpu is not None or phase == "generate"
        totals[phase] = base + (sum(rises) if together else max(rises, default=0.0))
    phase = max(PHASES, key=lambda p: totals[p])
    return DeviceMemory(node, gpu, members, totals[phase], phase, capacity)


def _where(device: DeviceMemory) -> str:
    return f"node {device.node} " + ("host memory" if device.gpu is None else f"GPU {device.gpu}")


def _engine_config(role: str, cfg: RunConfig) -> EngineConfig:
    return cfg.rollout if role == "rollout" else cfg.reward.judge_engine


def engine_problem(who: str, engine: EngineConfig, estimate: Estimate, gpu_gib: float) -> str:
    """Why vLLM would refuse to start `who` (its fraction cannot hold its weights/tp and one max_model_len
    sequence), or "" when it starts."""
    kv = dict(estimate.parts).get("kv cache", 0.0)
    if kv >= estimate.min_kv_gib:
        return ""
    reserved = engine.gpu_memory_utilization * gpu_gib
    need = estimate.peak_gib - kv + estimate.min_kv_gib
    return (f"{who}: vLLM needs {need:.1f} GiB (weights/tp + context + KV for one {engine.max_model_len:,}-token "
            f"sequence) within gpu_memory_utilization {engine.gpu_memory_utilization:g} x {gpu_gib:g} GiB = "
            f"{reserved:.1f} GiB: short by {need - reserved:.1f} GiB")


def _short_message(device: DeviceMemory) -> str:
    """Names the device, each member's share (one member: its breakdown), the need and the shortfall."""
    known = [(s, e) for s, e in device.members if e is not None]
    if len(known) == 1:
        (slot, estimate), = known
        breakdown = " + ".join(f"{name} {gib:.1f}" for name, gib in estimate.parts)
        need = f"{slot.role}[{slot.index}] needs {device.peak_gib:.1f} GiB ({breakdown})"
    else:
        shares = " + ".join(f"{s.role}[{s.index}] {_at(e, device.phase):.1f}" for s, e in known)
        need = f"{shares} = {device.peak_gib:.1f} GiB at the {device.phase} peak"
    return f"{_where(device)}: {need}, but it has {device.capacity_gib:g} GiB: short by {device.short_gib:.1f} GiB"


def _at(estimate: Estimate, phase: str) -> float:
    return estimate.peak_gib if estimate.phase in (phase, None) else estimate.idle_gib


def format_memory_plan(memory: MemoryPlan, cfg: RunConfig) -> str:
    """Per node and per GPU (host memory on CPU): members and their memory breakdowns, then the totals."""
    pc = memory.placement
    gpu = cfg.device == "gpu"
    shape = (f"{cfg.placement.num_nodes} node(s) x {cfg.placement.gpus_per_node} GPUs x "
             f"{cfg.placement.gpu_memory_gib:g} GiB" if gpu else f"{cfg.placement.num_nodes} CPU node(s)")
    lines = [f"memory plan (GiB): {shape}, strategy {pc.strategy}; node numbers are the plan's, Ray picks machines"]
    present = {s.role for s in pc.slots}
    for role, arch in sorted(memory.roles.architectures.items()):
        if role in present:
            params = arch.critic_params() if role == "critic" else arch.num_params()
            lines.append(f"  {role} model: {arch.name}, {params:,} parameters")
    for role, why in sorted(memory.roles.unknown.items()):
        if role in present:
            lines.append(f"  {role}: memory UNKNOWN ({why})")
    for node in sorted(set(memory.bundle_nodes)):
        lines.append(f"  node {node}:")
        for device in (d for d in memory.devices if d.node == node):
            lines.extend(_device_lines(device))
        cpu_only = [f"{s.role}[{s.index}]" for s in pc.slots if gpu and memory.bundle_nodes[s.bundle] == node
                    and not memory.bundle_gpus[s.bundle]]
        if cpu_only:
            lines.append(f"    CPU only: {', '.join(cpu_only)}")
    lines.extend(format_totals(run_totals(memory, cfg), cfg))
    peak = max(memory.devices, key=lambda d: d.peak_gib, default=None)
    if peak:
        lines.append(f"  peak {peak.peak_gib:.1f} GiB on {_where(peak)}")
    unchecked = sorted({"some members' memory is unknown" if not d.known else
                        ("host memory not checked (placement.host_memory_gib unset)" if d.gpu is None else
                         "GPU memory not checked") for d in memory.devices if not d.known or d.capacity_gib is None})
    if memory.problems:
        lines.append("  DOES NOT FIT:\n    " + "\n    ".join(memory.problems))
    else:
        lines.append("  fits" + (f" as far as checked: {'; '.join(unchecked)}" if unchecked else ""))
    if pc.node_labels:
        lines.append("  (the node layout above ignores placement.node_labels: Ray puts labelled bundles on the "
                     "nodes that carry the labels)")
    return "\n".join(lines)


def _device_lines(device: DeviceMemory) -> list[str]:
    name = "host" if device.gpu is None else f"GPU {device.gpu}"
    bound = "" if device.known else " at least (some members unknown)"
    of = f" of {device.capacity_gib:g}" if device.capacity_gib is not None else ""
    lines = [f"    {name}: {device.peak_gib:.1f}{of}{bound}, peak in {device.phase}"]
    for slot, estimate in device.members:
        if estimate is None:
            lines.append(f"      {slot.role}[{slot.index}]  unknown")
            continue
        if not estimate.parts:
            continue
        parts = " + ".join(f"{name} {gib:.1f}" for name, gib in estimate.parts)
        # What a member holds while the others peak matters only where it shares the device.
        idle = f"; {estimate.idle_gib:.1f} while {'asleep' if estimate.phase == 'generate' else 'idle'}" \
            if len(device.members) > 1 and estimate.phase and estimate.idle_gib < estimate.peak_gib else ""
        kv = f"; KV cache {estimate.kv_tokens:,} tokens" if estimate.kv_tokens is not None else ""
        lines.append(f"      {slot.role}[{slot.index}]  {estimate.peak_gib:.1f} = {parts}{idle}{kv}")
    return lines
