"""Joining and leaving Ray: resource keys ignored with a note when joining, the job's cluster joined under
`ray job submit`, a relative output_dir refused there, and `shutdown_ray` ending every process of the cluster this
process started (a stubborn one included) while another Ray on the host keeps running."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from clinical_rl.cli import main
from clinical_rl.config import RayConfig
from clinical_rl.config_files import load_config
from clinical_rl.launch.cluster import JOB_ENV_VAR, check_job_outputs, connect_ray, shutdown_ray, terminate_processes

ROOT = Path(__file__).resolve().parents[2]

# Another Ray on the same host, as a second user's would be: it must survive everything these tests shut down.
OTHER_RAY = """
import sys, ray
ray.init(address="local", num_cpus=1, object_store_memory=200 * 1024**2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def other_ray():
    """(GCS address, processes) of a Ray cluster started by another process; stopped by its own PIDs."""
    proc = subprocess.Popen([sys.executable, "-c", OTHER_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    address = proc.stdout.readline().strip()
    assert address, "the other Ray did not start"
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    yield address, tree
    proc.stdin.write("\n")
    proc.stdin.close()
    try:
        proc.wait(timeout=30)  # its own ray.shutdown at exit
    except subprocess.TimeoutExpired:
        pass
    terminate_processes(tree)


def test_relative_output_dir_is_refused_only_under_a_job(monkeypatch, tmp_path, capsys):
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", ["output_dir=runs/tiny"])
    check_job_outputs(cfg)  # a local run may write under the current directory
    monkeypatch.setenv(JOB_ENV_VAR, "{}")
    with pytest.raises(ValueError, match=r"output_dir=runs/tiny is relative.*output_dir=/mnt/shared/runs/tiny"):
        check_job_outputs(cfg)
    with pytest.raises(ValueError, match=r"synthesis.output=s.jsonl is relative"):
        check_job_outputs(cfg.model_copy(update={"output_dir": str(tmp_path),
                                                 "synthesis": cfg.synthesis.model_copy(update={"output": "s.jsonl"})}))
    check_job_outputs(cfg.model_copy(update={"output_dir": str(tmp_path)}))
    # the CLI refuses it before anything starts; `plan` writes nothing and is not refused
    assert main(["ppo", "--config", "configs/tiny_cpu.yaml", "output_dir=runs/tiny"]) == 2
    assert "clinical-rl: output_dir=runs/tiny is relative" in capsys.readouterr().err
    assert main(["plan", "--config", "configs/tiny_cpu.yaml", "output_dir=runs/tiny", "model.path=embedded"]) == 0


@pytest.mark.ray
def test_joining_ignores_local_cluster_keys_with_a_note(other_ray, monkeypatch, capsys):
    import ray

    address, others = other_ray
    try:
        assert connect_ray(RayConfig(address=address, num_cpus=4, object_store_gib=0.5)) is False
        assert ray.get_runtime_context().gcs_address == address
        err = capsys.readouterr().err
        assert f"joining the Ray cluster at {address}: ignored ray.num_cpus=4, ray.object_store_gib=0.5" in err
        assert shutdown_ray() == []  # a joined cluster's processes are not this process's to end
        # under `ray job submit`, no address joins the job's cluster (RAY_ADDRESS, set by the job supervisor)
        monkeypatch.setenv(JOB_ENV_VAR, "{}")
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert connect_ray(RayConfig(num_cpus=4)) is False
        assert ray.get_runtime_context().gcs_address == address
        assert "joining the Ray cluster at auto: ignored ray.num_cpus=4 " in capsys.readouterr().err
        assert shutdown_ray() == []
    finally:
        ray.shutdown()
    assert all(p.is_running() for p in others)


def start_stubborn_child() -> int:
    """Run in a Ray worker: a grandchild that ignores SIGTERM, as Ray's agents were seen to after a SIGTERM.

    A grandchild under a shell, in a session of its own: a worker that exits SIGKILLs its direct children and a
    process group may be killed whole, and neither must be what ends it. Returns its PID.
    """
    shell = subprocess.Popen(["sh", "-c", f"{shlex.quote(sys.executable)} -c {shlex.quote(STUBBORN)} & wait"],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    return int(shell.stdout.readline())


STUBBORN = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(os.getpid(), flush=True); "
            "time.sleep(600)")


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.ray
def test_shutdown_ray_ends_every_process_it_started_and_no_other(other_ray, monkeypatch):
    import ray

    address, others = other_ray
    monkeypatch.setenv("RAY_ADDRESS", address)  # ray.address unset starts a cluster even so
    # this process's children from before (in the full suite: session servers of other tests) are not Ray's
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert connect_ray(RayConfig(num_cpus=2, object_store_gib=0.3)) is True
    try:
        assert ray.get_runtime_context().gcs_address != address
        stubborn = ray.get(ray.remote(start_stubborn_child).remote())
        other_pids = {p.pid for p in others} | before
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in other_pids]
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= {p.name() for p in started}
        assert stubborn in {p.pid for p in started}
    finally:
        stopped = shutdown_ray()
    assert stubborn in stopped  # SIGTERM ignored: it took the SIGKILL
    assert [p for p in started if running(p)] == []
    assert all(running(p) for p in others)
    assert os.getpid() not in stopped


# A driver as `clinical-rl ppo` is one: a SIGTERM handler, a cluster of its own, clean-up in `finally` that takes
# longer than the 3 s after which Ray's own SIGTERM handler would abort the process.
DRIVER = """
import signal, sys, time
from clinical_rl.config import RayConfig
from clinical_rl.launch.cluster import connect_ray, shutdown_ray
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
assert connect_ray(RayConfig(num_cpus=1, object_store_gib=0.2))
try:
    print("ready", flush=True)
    time.sleep(600)
finally:
    time.sleep(5)  # stopping actors, removing the placement group
    print("stopped", shutdown_ray(), flush=True)
"""


@pytest.mark.ray
def test_sigterm_of_a_driver_unwinds_and_leaves_no_process():
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "ready"
        started = psutil.Process(proc.pid).children(recursive=True)
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= {p.name() for p in started}
        proc.terminate()
        assert proc.wait(timeout=60) == 143  # its own handler's code: not -6 (SIGABRT) from Ray's handler
        assert "stopped" in proc.stdout.read()
        time.sleep(1)
        assert [(p.pid, p.name()) for p in started if running(p)] == []
    finally:
        proc.kill()
        terminate_processes(started if "started" in locals() else [])
