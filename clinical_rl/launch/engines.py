"""Every vLLM engine of the package starts here, from one config shape (`EngineConfig`): rollout, judge,
evaluation and synthesis engines.

On CPU, engines that share a node get disjoint core bindings (`VLLM_CPU_OMP_THREADS_BIND`): vLLM pins one OpenMP
thread per bound core, and two engines bound to the same cores run slower together than one after the other.
An engine alone on its node binds every core (the phases of a step take turns on them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clinical_rl.config import RayConfig, RolloutConfig
from clinical_rl.config_base import EngineConfig
from clinical_rl.device import Device, DTypeName
from clinical_rl.launch.actors import kill_all, run_on, start_actor, wait_ready
from clinical_rl.launch.placement import Slot, create_placement_group, plan_group

log = logging.getLogger(__name__)
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def rollout_config(cfg: EngineConfig) -> RolloutConfig:
    """The engine actor's config: `cfg`'s engine fields, sampling defaults for chat-only engines."""
    if isinstance(cfg, RolloutConfig):
        return cfg
    return RolloutConfig(**cfg.model_dump(include=set(EngineConfig.model_fields)))


def split_cores(cores: list[int], widths: list[int]) -> list[list[int]]:
    """Consecutive, disjoint runs of `cores`, one of `widths[i]` cores per engine.

    When the node has fewer cores than the widths ask for, each engine gets its proportional share (at least one);
    engines beyond the core count share cores round-robin (unavoidable, and logged by the caller).
    """
    if sum(widths) > len(cores):
        total = sum(widths)
        widths = [max(1, w * len(cores) // total) for w in widths]
    runs, start = [], 0
    for w in widths:
        if start + w > len(cores):
            start = 0
        runs.append(cores[start : start + w])
        start += w
    return runs


def _usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


Bindings = dict[tuple[str, int], dict[str, str]]  # (role, index) -> environment of that engine actor


def cpu_bindings(slots: list[Slot], pg: Any, bundle_nodes: list[str], device: Device) -> Bindings:
    """Per engine slot (all engines of a run: rollout and judge), the environment that binds it to its own cores
    when several engines share a node; empty on GPU."""
    if device.is_gpu:
        return {}
    by_node: dict[str, list[Slot]] = {}
    for slot in slots:
        by_node.setdefault(bundle_nodes[slot.bundle], []).append(slot)
    env: Bindings = {}
    for node, members in by_node.items():
        if len(members) < 2:
            continue
        cores = run_on(members[0], pg, _usable_cores)
        runs = split_cores(cores, [max(1, math.ceil(s.num_cpus)) for s in members])
        if len({c for run in runs for c in run}) < sum(len(run) for run in runs):
            log.warning("node %s: %d engines share %d cores; their bindings overlap", node[:12], len(members),
                        len(cores))
        for slot, run in zip(members, runs):
            env[(slot.role, slot.index)] = {BIND_ENV: ",".join(map(str, run))}
    return env


def start_engines(cfg: EngineConfig, model_path: Path, slots: list[Slot], pg: Any, bindings: Bindings, *,
                  device: Device, dtype: DTypeName, seed: int, trust_remote_code: bool = False,
                  sleep_mode: bool = False, name: str | None = None) -> list[Any]:
    """One `RolloutEngine` actor per slot (engine i seeded `seed + i`); returns the handles without waiting.

    `bindings` from `cpu_bindings` over every engine of the placement group; `dtype` is used when `cfg.dtype` is
    null; `name` names the single engine of a named role (the judge).
    """
    from clinical_rl.actors.rollout import RolloutEngine

    engine_cfg = rollout_config(cfg)
    return [
        start_actor(RolloutEngine, slot, pg, str(model_path), engine_cfg, device, cfg.dtype or dtype,
                    seed + slot.index, trust_remote_code, sleep_mode=sleep_mode,
                    env=bindings.get((slot.role, slot.index)),
                    name=name, max_restarts=cfg.max_restarts)
        for slot in slots
    ]


def stop_engines(engines: list[Any]) -> None:
    """Shut the engines' vLLM processes down, then kill the actors.

    vLLM's engine-core and worker processes are children of the engine actor, not Ray workers: `ray.kill` alone
    would orphan them, so each engine first stops its own.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    try:
        ray.get([engine.shutdown.remote() for engine in engines], timeout=60)
    except (GetTimeoutError, RayError) as err:  # still kill the actors below; say what may be left behind
        log.warning("vLLM engine shutdown failed (%s); its processes may outlive the run", err)
    kill_all(engines)


@contextlib.contextmanager
def engine_pool(cfg: EngineConfig, model_path: Path, ray_cfg: RayConfig, *, device: Device, dtype: DTypeName,
                seed: int, trust_remote_code: bool, what: str) -> Iterator[list[Any]]:
    """Engines of `model_path` in a placement group of their own, for one evaluation or synthesis; removed after.
    `dtype` applies where `cfg.dtype` is null.

    Raises TimeoutError (naming `what`) when the engines do not start within 30 minutes.
    """
    from ray.util.placement_group import remove_placement_group

    from clinical_rl.launch.cluster import connect_ray, shutdown_ray

    started_ray = connect_ray(ray_cfg)
    pg = None
    engines: list[Any] = []
    try:
        plan = plan_group("engine", cfg.num_engines, cfg.num_cpus, device, num_gpus=cfg.tensor_parallel_size)
        pg, nodes = create_placement_group(plan)
        bindings = cpu_bindings(plan.slots, pg, nodes, device)
        engines = start_engines(cfg, model_path, plan.slots, pg, bindings, device=device, dtype=dtype, seed=seed,
                                trust_remote_code=trust_remote_code)
        wait_ready(engines, what, timeout_s=1800)
        yield engines
    finally:
        if engines:
            stop_engines(engines)
        if pg is not None:
            remove_placement_group(pg)
        if started_ray:
            shutdown_ray()
