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


def test_read_metrics_reads_back_what_the_tracker_wrote_and_names_a_bad_line(tmp_path):
    import pytest

    from clinical_rl.tracking import read_metrics

    file = tmp_path / "metrics.jsonl"
    tracker = Tracker(TrackingConfig(wandb_mode="disabled"), tmp_path, {}, metrics_file=file)
    tracker.log({"reward/correct": 0.25}, step=1, console=False)
    tracker.log({"reward/correct": float("nan")}, step=2, console=False)
    assert read_metrics(file) == [{"step": 1, "reward/correct": 0.25}, {"step": 2, "reward/correct": None}]
    file.write_text('{"step": 1}\n{"reward": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected an object with a 'step'"):
        read_metrics(file)
