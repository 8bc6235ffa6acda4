"""`clinical-rl select-rl-data` end to end: real vLLM engine actors on Ray sample the answers, the clinical reward
scores them, and the PPO stage loads the file it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinical_rl.cli import main
from clinical_rl.config_files import load_config
from clinical_rl.data.loaders import load_cases

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny_cpu.yaml")


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.ray
def test_selected_cases_load_as_the_ppo_stages_data(tmp_path, capsys):
    n, out = 3, tmp_path / "selected" / "rl_data.jsonl"
    code = main(["select-rl-data", "--config", CONFIG, "--model", "embedded", "--n", str(n), "--band", "0", "1",
                 "--out", str(out), "--skip-endpoint-check", "model.path=embedded", f"output_dir={tmp_path}",
                 "data.limit=4", "rollout.max_new_tokens=16", "rollout.max_model_len=1024", "ray.num_cpus=2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "select-rl-data: kept 4 of 4 cases with a pass rate in [0, 1]" in stdout
    assert f"selected cases: {out}" in stdout

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["n_samples"] == n and r["n_scored"] == n for r in rows)
    for r in rows:  # a pass rate is k/n: every sample scored, each passed or not
        assert 0 <= r["pass_rate"] <= 1 and r["pass_rate"] * n == pytest.approx(round(r["pass_rate"] * n))
        assert r["pass_rate"] == r["n_passed"] / n
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["counts"]["kept"] == 4 and summary["samples"] == 4 * n and summary["failed_samples"] == 0
    assert sum(summary["pass_rate_histogram"].values()) == 4

    # The PPO stage's own preflight loads the file as its data: the same cases, every schema field intact.
    from clinical_rl.rl.driver import preflight

    ppo = load_config(CONFIG, ["model.path=embedded", f"output_dir={tmp_path / 'ppo'}", f"data.path={out}"])
    _, _, cases, _ = preflight(ppo)
    assert cases == load_cases("builtin", limit=4)
    assert {c.language for c in cases} == {"en", "zh"} and all(c.icd10 and c.department for c in cases)
