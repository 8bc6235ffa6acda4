"""The CLI fails fast, before Ray or any actor starts, naming what is wrong."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clinical_rl.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_wrong_config_key_is_named():
    out = cli("ppo", "--config", "configs/demo.yaml", "algo.kl_coeff=0.1")
    assert out.returncode == 2
    assert "algo.kl_coeff: unknown key" in out.stderr


def test_missing_model_path_is_named(tmp_path):
    out = cli("ppo", "--config", "configs/tiny_cpu.yaml", f"model.path={tmp_path / 'nope'}")
    assert out.returncode == 2
    assert f"model.path: no HF model at {tmp_path / 'nope'}" in out.stderr


def test_unreachable_reward_class_is_named(task_model):
    out = cli("ppo", "--config", "configs/tiny_cpu.yaml", f"model.path={task_model}", "reward.cls=my_lab.rewards:Judge")
    assert out.returncode == 2
    assert "reward.cls: cannot import module 'my_lab.rewards'" in out.stderr


def test_plan_prints_config_and_bundles():
    out = cli("plan", "--config", "configs/demo.yaml", "rollout.num_engines=2")
    assert out.returncode == 0, out.stderr
    assert "num_engines: 2" in out.stdout
    assert "rollout[1]" in out.stdout and "policy[0]" in out.stdout and "reward[0]" in out.stdout


def test_bad_audit_pairs_file_is_named_before_anything_starts(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"reference": "Acute appendicitis", "prediction": "appendicitis", "label": "yes", "kind": "x"}\n')
    out = cli("ppo", "--config", "configs/demo.yaml", f"reward.audit.pairs={pairs}", f"output_dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert f"reward.audit.pairs: {pairs}:1: label: Input should be a valid boolean" in out.stderr
    assert not (tmp_path / "run").exists()  # failed in preflight: no output, no Ray


def test_plan_shows_the_wingpt_grpo_cluster_config():
    """configs/cluster_grpo_wingpt.yaml: WiNGPT-style GRPO (128 prompts x 12 rollouts) fits 2 nodes x 8 GPUs; the
    plan says what a step does, dynamic sampling's generation bound included (3 rounds x 128 prompts)."""
    out = cli("plan", "--config", "configs/cluster_grpo_wingpt.yaml", "tracking.wandb_mode=offline")
    assert "RL step: grpo with no critic; KL k3 in the loss, coef 0.001" in out.stdout
    # 1536 samples / 256 = 6 minibatches x 1 epoch
    assert "128 prompts x 12 samples = 1536 samples; 6 minibatches of 256 x 1 epochs = 6 optimizer steps" in out.stdout
    assert "up to 3 rounds: at most 384 prompts (4608 samples) generated a step" in out.stdout
    assert "16 GPUs" in out.stdout and "  fits" in out.stdout and "critic[" not in out.stdout
    assert out.returncode == 1  # not ready here: the SFT checkpoint and the cases are on the cluster
    assert "model.path: no HF model at /mnt/shared/models/qwen2.5-7b-sft" in out.stderr
