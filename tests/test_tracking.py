"""Tracker: metrics.jsonl holds one line per logged step, starts empty, and is rewritten on a resume."""

import json

from clinical_rl.config import TrackingConfig
from clinical_rl.tracking import Tracker


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_file_lines_and_resume(tmp_path):
    file = tmp_path / "run" / "metrics.jsonl"
    tracker = Tracker(TrackingConfig(wandb_mode="disabled"), tmp_path / "run", {}, metrics_file=file)
    tracker.log({"reward/mean": 0.5, "audit/accuracy": 1.0}, step=1, console=False)
    tracker.log({"reward/mean": float("nan")}, step=2, console=False)
    assert read(file) == [{"step": 1, "reward/mean": 0.5, "audit/accuracy": 1.0}, {"step": 2, "reward/mean": None}]

    # A new run starts the file anew; resuming from a step-1 checkpoint drops the lines logged after it.
    resumed = Tracker(TrackingConfig(wandb_mode="disabled"), tmp_path / "run", {}, metrics_file=file)
    assert file.read_text() == ""
    resumed.restore(tracker.history[:1])
    resumed.log({"reward/mean": 0.75}, step=2, console=False)
    assert read(file) == [{"step": 1, "reward/mean": 0.5, "audit/accuracy": 1.0}, {"step": 2, "reward/mean": 0.75}]
    assert resumed.history == [{"reward/mean": 0.5, "audit/accuracy": 1.0}, {"reward/mean": 0.75}]
