"""What each stage of `clinical-rl pipeline` starts, and the resources it holds while it runs.

The stages run one after another (`pipeline.py`), each releasing its placement group before the next starts, so
the run needs the largest stage, not the sum; only the disk adds up, as each stage's output stays. Memory comes
from the formulas of `launch.memory` (docs/memory.md), GiB = 2**30 bytes; disk from `launch.disk`, GB = 10**9.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clinical_rl.config import RunConfig
from clinical_rl.config_base import EngineConfig
from clinical_rl.device import Device
from clinical_rl.launch.disk import GB, checkpoint_disk, hf_model_bytes
from clinical_rl.launch.layout import MemoryPlan, assign_nodes, engine_problem, run_totals
from clinical_rl.launch.memory import Architecture, Estimate, engine_estimate, model_architecture, trainer_estimate
from clinical_rl.launch.placement import plan_group


@dataclass(frozen=True)
class StageNeeds:
    """One stage: what it starts and what it holds at once. `memory_gib` is, on device=gpu, the fullest GPU's need;
    on device=cpu, the host memory of all its actors together; None where an actor's model is unknown."""

    name: str  # synth | sft | ppo | eval
    what: str  # its actors, or why it has none
    gpus: int
    cpus: float
    memory_gib: float | None
    disk_bytes: int = 0  # what it leaves under output_dir: the SFT model, the PPO checkpoints and policy
    problems: tuple[str, ...] = ()


def pipeline_stages(cfg: RunConfig, memory: MemoryPlan) -> list[StageNeeds]:
    """Every stage of `cfg.pipeline.stages`, in order; `memory` is the PPO run's plan (`plan_memory(cfg)`)."""
    policy = memory.roles.architectures.get("policy")
    build = {"synth": lambda: _synth(cfg), "sft": lambda: _sft(cfg, policy), "ppo": lambda: _ppo(cfg, memory),
             "eval": lambda: _eval(cfg, policy)}
    return [build[stage]() for stage in cfg.pipeline.stages]


def _synth(cfg: RunConfig) -> StageNeeds:
    s = cfg.synthesis
    if s.teacher == "knowledge_base":
        return StageNeeds("synth", "knowledge-base teacher, rows written by the driver", 0, 0.0, 0.0)
    if s.engine_model is None:
        model = repr(s.model) if s.model else "(synthesis.model unset)"
        return StageNeeds("synth", f"endpoint {model} at {s.base_url or 'api.openai.com'}", 0, 0.0, 0.0)
    arch = model_architecture(s.engine_model, None)
    return _engines("synth", cfg, s.engine, {s.engine_model: arch}, "of synthesis.engine_model")


def _sft(cfg: RunConfig, policy: Architecture | None) -> StageNeeds:
    """`sft.world_size` DeepSpeed ranks training model.path at sft.micro_batch_size x sft.max_len tokens."""
    sft = cfg.sft
    estimate = None if policy is None else trainer_estimate(policy, sft, cfg.model.dtype, sft.max_len,
                                                            cfg.device == "gpu")
    what = (f"{sft.world_size} DeepSpeed rank(s) x {sft.num_cpus:g} CPUs, ZeRO-{sft.zero_stage}, "
            f"micro-batch {sft.micro_batch_size} x {sft.max_len} tokens")
    group = _group("sft", cfg, sft.world_size, sft.num_cpus, 1, estimate, cfg.placement.strategy)
    disk = 0 if policy is None else hf_model_bytes(policy, cfg.model.dtype)
    return replace(group, what=what, disk_bytes=disk)


def _ppo(cfg: RunConfig, memory: MemoryPlan) -> StageNeeds:
    """The PPO run's placement group, as `plan_memory` laid it out."""
    totals = run_totals(memory, cfg)
    if cfg.device == "gpu":
        peak = max((d.peak_gib for d in memory.devices), default=0.0)
    else:
        peak = totals.host_memory_gib
    disk = checkpoint_disk(cfg, memory.roles)
    roles = [s.role for s in memory.placement.slots]
    what = ", ".join(f"{roles.count(r)} {r}" for r in dict.fromkeys(roles)) + f" in {totals.bundles} bundles"
    return StageNeeds("ppo", what, totals.gpus, totals.cpus,
                      peak if totals.known else None, 0 if isinstance(disk, str) else disk.peak_bytes,
                      tuple(memory.problems))


def _eval(cfg: RunConfig, policy: Architecture | None) -> StageNeeds:
    """Engines of each local model, one model at a time (`eval/runner.py :: open_backend`); endpoints need none."""
    stages = cfg.pipeline.stages
    trained = ["base"] + ["sft"] * ("sft" in stages) + ["sft+rl" if "sft" in stages else "rl"] * ("ppo" in stages)
    # base, sft and rl share model.path's shape (placement.architecture where it is not on this machine).
    archs: dict[str, Architecture | str | None] = {label: policy for label in trained}
    archs |= {m.label: model_architecture(m.path, None) for m in cfg.eval.models if m.path is not None}
    endpoints = [m.label for m in cfg.eval.models if m.path is None]
    stage = _engines("eval", cfg, cfg.eval.engine, archs, "per model, one model at a time")
    return replace(stage, what=f"{stage.what}; endpoints, no local actors: {', '.join(endpoints)}") if endpoints \
        else stage


def _engines(name: str, cfg: RunConfig, engine: EngineConfig, archs: dict[str, Architecture | str | None],
             whose: str) -> StageNeeds:
    """`engine.num_engines` vLLM engines (`launch/engines.py :: engine_pool`, PACK) of each model in `archs`, one
    model at a time: the largest model's need."""
    gpu_gib = cfg.placement.gpu_memory_gib if cfg.device == "gpu" else None
    dtype = engine.dtype or cfg.model.dtype
    groups, problems = [], []
    for label, arch in archs.items():
        estimate = engine_estimate(arch if isinstance(arch, Architecture) else None, engine, dtype, gpu_gib, None)
        groups.append(_group(name, cfg, engine.num_engines, engine.num_cpus, engine.tensor_parallel_size, estimate,
                             "PACK"))
        if estimate is not None and estimate.min_kv_gib:
            problems.append(engine_problem(f"{name} engine of {label}", engine, estimate, cfg.placement.gpu_memory_gib))
    problems = [p for p in dict.fromkeys(problems + [p for g in groups for p in g.problems]) if p]
    memory = [g.memory_gib for g in groups]
    what = (f"{engine.num_engines} vLLM engine(s) x {engine.num_cpus:g} CPUs"
            + (f" x {engine.tensor_parallel_size} GPUs" if gpu_gib else "") + f" {whose} ({', '.join(archs)})")
    return StageNeeds(name, what, groups[0].gpus, groups[0].cpus, None if None in memory else max(memory),
                      problems=tuple(problems))


def _group(name: str, cfg: RunConfig, count: int, num_cpus: float, gpus_each: int, estimate: Estimate | None,
           strategy: str) -> StageNeeds:
    """`count` identical actors, a bundle each (`placement.plan_group`), laid out as Ray would (`assign_nodes`),
    with why they cannot run: a bundle that fits no node, a GPU or a node's host memory that is too small."""
    device = Device(cfg.device)
    bundles = plan_group(name, count, num_cpus, device, num_gpus=gpus_each).bundles
    problems = []
    try:
        nodes = assign_nodes(bundles, strategy, cfg.placement)
    except ValueError as err:
        problems.append(f"{name}: {err}")
        nodes = [0] * count
    gpus, cpus = (count * gpus_each if device.is_gpu else 0), count * num_cpus
    if estimate is None:
        return StageNeeds(name, "", gpus, cpus, None, problems=tuple(problems))
    # Each actor has its own GPUs; on CPU the actors of a node share its host memory.
    need = {n: estimate.peak_gib * (1 if device.is_gpu else nodes.count(n)) for n in sorted(set(nodes))}
    capacity = cfg.placement.gpu_memory_gib if device.is_gpu else cfg.placement.host_memory_gib
    where = "each GPU" if device.is_gpu else "host memory"
    problems += [f"{name} on node {n}: needs {gib:.1f} GiB of {where}, which has {capacity:g} GiB: short by "
                 f"{gib - capacity:.1f} GiB" for n, gib in need.items() if capacity is not None and gib > capacity]
    memory_gib = estimate.peak_gib if device.is_gpu else sum(need.values())
    return StageNeeds(name, "", gpus, cpus, memory_gib, problems=tuple(problems))


def format_pipeline_stages(stages: list[StageNeeds], cfg: RunConfig) -> str:
    """One line per stage (its actors, GPUs, CPUs, memory, disk), then the peak over the stages and the disk."""
    gpu = cfg.device == "gpu"
    memory_name = "GiB on its fullest GPU" if gpu else "GiB host memory"
    lines = ["pipeline stages, one after another (the run needs the largest stage, not the sum; disk adds up):"]
    for s in stages:
        memory = "memory UNKNOWN" if s.memory_gib is None else f"{s.memory_gib:.1f} {memory_name}"
        used = ((f"{s.gpus} GPUs, " if gpu else "") + f"{s.cpus:g} CPUs, {memory}") if s.cpus else "no actors"
        disk = f"; disk up to {s.disk_bytes / GB:.1f} GB" if s.disk_bytes else ""
        lines.append(f"  {s.name:<5}  {used}: {s.what}{disk}")
        lines.extend(f"         PROBLEM: {p}" for p in s.problems)
    if stages:
        largest = {"GPUs": max(stages, key=lambda s: s.gpus), "CPUs": max(stages, key=lambda s: s.cpus),
                   "memory": max(stages, key=lambda s: s.memory_gib or 0.0)}
        peak = [f"{largest['GPUs'].gpus} GPUs ({largest['GPUs'].name})"] if gpu else []
        peak.append(f"{largest['CPUs'].cpus:g} CPUs ({largest['CPUs'].name})")
        memory = largest["memory"]
        unknown = " at least (some memory unknown)" if any(s.memory_gib is None for s in stages) else ""
        peak.append(f"{memory.memory_gib or 0.0:.1f} {memory_name}{unknown} ({memory.name})")
        total_disk = sum(s.disk_bytes for s in stages)
        lines.append(f"  peak: {', '.join(peak)}; disk {total_disk / GB:.1f} GB at most")
    return "\n".join(lines)
