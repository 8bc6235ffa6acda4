"""`ray job submit` end to end: the launch/README.md recipe against a local head of this test's own.

The head is started as the recipe (and `make ray-head`) starts it: the environment's `bin/` on PATH, so the
entrypoint `python -m clinical_rl` resolves, and token authentication on in the head's shell and in the submitting
shell alike (here with a token file of the test's own, never ~/.ray/auth_token). It has its own temp dir and
ports, and is stopped by its own PIDs: never a bare `ray stop`, which stops every Ray on the host.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from clinical_rl.launch.cluster import terminate_processes
from tests.candidate_task import SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

JOB_DEADLINE_S = 240


@dataclass
class Head:
    url: str  # the dashboard (job API), bound to 127.0.0.1
    env: dict[str, str]  # the shell of the recipe: RAY_AUTH_MODE=token, the token, the environment on PATH
    token: str


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 right now (all bound at once, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_dashboard(url: str, token: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"the head's dashboard did not answer within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def head(tmp_path):
    # Ray's Unix sockets live under the temp dir and their paths are capped at 107 bytes: tmp_path is too deep.
    temp_dir = tempfile.mkdtemp(prefix="crl-", dir="/tmp")
    token = uuid.uuid4().hex
    (tmp_path / "token").write_text(token)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager, client = free_ports(9)
    log = tmp_path / "head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--num-cpus=4",
             f"--object-store-memory={512 * 1024**2}", "--disable-usage-stats", f"--port={gcs}",
             f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent_http}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
             f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
             f"--object-manager-port={object_manager}", f"--ray-client-server-port={client}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{dashboard}"
        wait_for_dashboard(url, token, proc, log)
        yield Head(url=url, env=env, token=token)
    finally:
        # Every process of this head: `ray start --block` and its descendants (GCS, raylet, dashboard, agents,
        # workers, the job's driver and its actors), plus any that a dead parent left naming the temp dir.
        root = psutil.Process(proc.pid)
        procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
        for p in psutil.process_iter(["cmdline"]):
            if any(temp_dir in arg for arg in p.info["cmdline"] or []):
                procs.setdefault(p.pid, p)
        terminate_processes(list(procs.values()), grace_s=5)
        proc.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(head: Head, submission_id: str, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit` of `python -m clinical_rl ARGS`, the repository as working_dir, waiting for the end."""
    runtime_env = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    argv = [str(BIN / "ray"), "job", "submit", "--address", head.url, "--submission-id", submission_id,
            "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env),
            "--", "python", "-m", "clinical_rl", *args]
    return subprocess.run(argv, env=head.env, capture_output=True, text=True, timeout=JOB_DEADLINE_S)


def test_ppo_job_reaches_succeeded_with_the_policy_in_output_dir(task_model, task_cases, head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "run"
    common = ["ppo", "--config", "configs/tiny_cpu.yaml", "ray.address=auto", f"model.path={task_model}",
              f"data.path={task_cases}", f"data.system_prompt={SYSTEM_PROMPT}", "steps=1",
              "tracking.wandb_mode=disabled"]

    # A relative output_dir would land in Ray's temporary working_dir copy: refused before anything starts.
    refused = submit(head, "clinical-rl-relative", *common)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "clinical-rl: output_dir=runs/default is relative" in refused.stdout

    started = time.monotonic()
    job = submit(head, "clinical-rl-ppo", *common, f"output_dir={out}")
    elapsed = time.monotonic() - started
    assert job.returncode == 0, job.stdout[-6000:] + job.stderr[-3000:]
    assert "Job 'clinical-rl-ppo' succeeded" in job.stdout + job.stderr

    # The job API, as any client would read it (the SDK with the cluster's token).
    client = JobSubmissionClient(head.url, headers={"Authorization": f"Bearer {head.token}"})
    assert client.get_job_status("clinical-rl-ppo") == JobStatus.SUCCEEDED
    logs = client.get_job_logs("clinical-rl-ppo")
    assert "joining the Ray cluster at auto: ignored ray.num_cpus=4, ray.object_store_gib=0.5" in logs
    assert "policy[0]" in logs and "rollout[0]" in logs  # the placement plan
    assert "step    1" in logs  # the step's metrics line
    assert f"final policy (HF format): {out / 'policy'}" in logs

    policy = out / "policy"
    assert (policy / "config.json").is_file()
    assert list(policy.glob("*.safetensors")), sorted(p.name for p in policy.iterdir())
    assert (out / "metrics.jsonl").read_text().count("\n") == 1
    print(f"ppo job: {elapsed:.0f}s from submit to SUCCEEDED")
