"""Joining or starting the Ray cluster a command runs on, and leaving it clean.

Four facts of Ray 2.60 shape this module (read in the installed `ray` package):
- `ray job submit` runs the entrypoint with `RAY_JOB_CONFIG_JSON_ENV_VAR` in its environment (set for the driver
  only, by `ray/dashboard/modules/job/job_supervisor.py`), in a temporary copy of the job's `working_dir` under
  the session directory, which Ray deletes later.
- `ray.init` refuses `num_cpus` and `object_store_memory` when it joins an existing cluster.
- A driver that joins an explicit address never turns on token authentication by itself
  (`ray/_private/worker.py`): against a cluster with token auth it retries, then raises `ConnectionError`.
- `ray.init` leaves a C++ failure handler on SIGTERM that logs, runs the Python handler, and aborts the process
  3 s later (exit -6; absl's alarm): a driver stopped by SIGTERM (`ray job stop`, a pod eviction, `kill`) was cut
  off while stopping its actors and never reached `ray.shutdown()`, leaving Ray's agents behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from clinical_rl.config import RayConfig, RunConfig

if TYPE_CHECKING:
    import psutil

# Keys of `ray:` that only size a cluster this process starts.
LOCAL_CLUSTER_KEYS = ("num_cpus", "object_store_gib")
JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def under_ray_job() -> bool:
    """True in the driver of a `ray job submit` job (also a KubeRay RayJob, which submits the same way)."""
    return JOB_ENV_VAR in os.environ


def check_job_outputs(cfg: RunConfig) -> None:
    """Under `ray job submit`, refuse output paths relative to the driver's working directory.

    The driver's working directory is then Ray's temporary copy of the job's `working_dir`: a run written there
    is deleted with it, and the other nodes cannot see it. Outside a job this does nothing.

    Raises:
        ValueError: `output_dir`, `eval.out_dir`, `synthesis.output` or `select.output` is relative; the message
            names the key, the directory it would land in and the fix.
    """
    if not under_ray_job():
        return
    for key, value in (("output_dir", cfg.output_dir), ("eval.out_dir", cfg.eval.out_dir),
                       ("synthesis.output", cfg.synthesis.output), ("select.output", cfg.select.output)):
        if value is not None and not Path(value).is_absolute():
            raise ValueError(
                f"{key}={value} is relative: under `ray job submit` it would land in {Path.cwd() / value}, in the "
                f"driver's working directory (Ray's temporary copy of the job's working_dir, which Ray deletes); give "
                f"an absolute path on storage that every node sees, e.g. {key}=/mnt/shared/{value}")


def connect_ray(cfg: RayConfig) -> bool:
    """Join `cfg.address`, or start a local cluster; True when this call started Ray (stop it with `shutdown_ray`).

    `cfg.address` None starts a cluster of this process, except under `ray job submit`, where it joins the job's
    cluster (a nested cluster there would compete with the one the job was given). When joining, `ray.num_cpus` and
    `ray.object_store_gib` set in the config are ignored with a one-line note on stderr. Afterwards SIGTERM runs
    the Python handler the caller had set (else Ray's `sys.exit`) with no abort 3 s later (module docstring).

    Raises:
        ConnectionError: the cluster cannot be joined; when `RAY_AUTH_MODE` is not `token`, the message says how
            to join a cluster that uses token authentication.
    """
    import ray

    if ray.is_initialized():
        return False
    # Processes of a cluster this call starts inherit the environment: vLLM and DeepSpeed read their levels there.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", cfg.log_level)
    os.environ.setdefault("CLINICAL_RL_LOG_LEVEL", cfg.log_level)
    address = cfg.address or ("auto" if under_ray_job() else None)
    previous = signal.getsignal(signal.SIGTERM)
    if address is None:
        # "local", not None: None would join whatever RAY_ADDRESS or a `ray start` on this host points at.
        ray.init(address="local", num_cpus=cfg.num_cpus, object_store_memory=int(cfg.object_store_gib * 1024**3),
                 include_dashboard=False, logging_level=cfg.log_level)
        _restore_sigterm(previous)
        return True
    ignored = [f"ray.{key}={getattr(cfg, key)}" for key in LOCAL_CLUSTER_KEYS if key in cfg.model_fields_set]
    if ignored:
        print(f"clinical-rl: joining the Ray cluster at {address}: ignored {', '.join(ignored)} (they size a "
              "cluster this command starts)", file=sys.stderr, flush=True)
    try:
        ray.init(address=address, logging_level=cfg.log_level)
    except ConnectionError as err:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            raise
        raise ConnectionError(
            f"{err}. If the cluster uses token authentication (Ray 2.60 turns it on when a token exists), set "
            "RAY_AUTH_MODE=token with the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH") from None
    _restore_sigterm(previous)
    return False


def with_cluster_shape(cfg: RunConfig) -> RunConfig:
    """`cfg` with `placement.num_nodes`, `gpus_per_node` and `cpus_per_node` taken from the cluster this process is
    connected to, where the config leaves them unset: the memory check before the actors start then checks the
    real cluster (nodes with CPUs or GPUs; per node, the largest node's count). GPU memory is not reported by Ray:
    `placement.gpu_memory_gib` stays as configured."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    nodes = [r for r in nodes if r.get("CPU", 0) > 0 or r.get("GPU", 0) > 0]
    cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    live = {"num_nodes": max(1, len(nodes)), "gpus_per_node": int(max((r.get("GPU", 0) for r in nodes), default=0)),
            "cpus_per_node": cpus or None}
    update = {key: value for key, value in live.items() if key not in cfg.placement.model_fields_set}
    return cfg.model_copy(update={"placement": cfg.placement.model_copy(update=update)})


def local_cluster_shape(cfg: RunConfig) -> RunConfig:
    """`cfg` as `with_cluster_shape` will see it once connected, for a plan made before: where `ray.address` is
    unset the run starts a one-node cluster here, with `ray.num_cpus` CPUs or this machine's count. A config that
    joins a cluster is returned as it is (its shape is the placement section's)."""
    if cfg.ray.address is not None:
        return cfg
    local = {"num_nodes": 1, "cpus_per_node": float(cfg.ray.num_cpus or os.cpu_count() or 1)}
    update = {key: value for key, value in local.items() if key not in cfg.placement.model_fields_set}
    return cfg.model_copy(update={"placement": cfg.placement.model_copy(update=update)})


def _restore_sigterm(previous: object) -> None:
    """Put a Python SIGTERM handler back over the one `ray.init` leaves (module docstring), so SIGTERM unwinds the
    driver (its `finally` blocks stop the actors and Ray) however long that takes: the caller's handler if it had
    one, else Ray's own Python handler (`sys.exit`). Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = previous if callable(previous) else signal.getsignal(signal.SIGTERM)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def shutdown_ray(grace_s: float = 3.0) -> list[int]:
    """`ray.shutdown()`, then end every process of the cluster this process started that is still alive.

    After a driver's SIGTERM, Ray's DashboardAgent and RuntimeEnvAgent (children of the raylet, renamed so their
    command line no longer names the session) were seen orphaned and ignoring SIGTERM for over 10 s. The processes
    are taken, before the shutdown, as those this process's Ray node started and their descendants: a cluster
    this process only joined yields none, and another Ray on the host is never touched.

    Args:
        grace_s: seconds between SIGTERM and SIGKILL for the processes still alive after `ray.shutdown()`.

    Returns:
        PIDs that were still alive after `ray.shutdown()` and had to be signalled (empty when it was clean).
    """
    import ray

    procs = _node_processes()
    ray.shutdown()
    alive = [p for p in procs if _alive(p)]
    return terminate_processes(alive, grace_s)


def terminate_processes(procs: list[psutil.Process], grace_s: float = 3.0) -> list[int]:
    """SIGTERM `procs`, then SIGKILL those still running after `grace_s` seconds; returns their PIDs.

    A process that already exited (or whose PID was reused: psutil checks the creation time) is skipped.
    """
    import psutil

    procs = [p for p in procs if _alive(p)]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, stubborn = psutil.wait_procs(procs, timeout=grace_s)
    for proc in stubborn:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(stubborn, timeout=grace_s)
    return [p.pid for p in procs]


def _node_processes() -> list[psutil.Process]:
    """The processes this process's Ray node started (GCS, raylet, dashboard, monitors) and their descendants."""
    import psutil
    from ray._private import worker

    # Ray has no public API for a node's processes; `all_processes` is empty for a node that only connected.
    node = worker._global_node
    if node is None:
        return []
    found: dict[int, psutil.Process] = {}
    for infos in node.all_processes.values():
        for info in infos:
            try:
                root = psutil.Process(info.process.pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
