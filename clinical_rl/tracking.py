"""Metrics: W&B (offline unless configured online with a key in the environment), the console, phase timers."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clinical_rl.config import TrackingConfig

# The keys shown on the console line; everything goes to W&B.
_CONSOLE_KEYS = (
    "reward/mean",
    "reward/correct",
    "reward/format_ok",
    "reward/failed_frac",
    "kl/mean",
    "policy/clipfrac",
    "loss/value",
    "rollout/response_length_mean",
    "perf/rollout_tokens_per_s",
    "timing/step",
)


class PhaseTimer:
    """Wall time per named phase of one step, reported as `timing/<phase>` seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"timing/{k}": v for k, v in self.seconds.items()}


class Tracker:
    """Logs each step's metrics to W&B and prints a compact line."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, config: Mapping[str, Any],
                 resume_id: str | None = None) -> None:
        """`resume_id`: the W&B run a resumed training continues (its later steps append to the same curves)."""
        if cfg.wandb_mode == "online" and not os.environ.get("WANDB_API_KEY"):
            raise ValueError("tracking.wandb_mode=online needs WANDB_API_KEY in the environment")
        self.run = None
        if cfg.wandb_mode != "disabled":
            import wandb

            run_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=cfg.project, name=cfg.run_name, mode=cfg.wandb_mode, dir=str(run_dir), config=dict(config),
                id=resume_id, resume="allow" if resume_id else None,
            )
        self.history: list[dict[str, float]] = []

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    @property
    def location(self) -> str:
        """Where the W&B run lives: its local directory offline, its URL online."""
        if self.run is None:
            return "W&B disabled"
        return self.run.url or str(Path(self.run.dir).parent)

    def log(self, metrics: Mapping[str, float], step: int, console: bool = True) -> None:
        self.history.append(dict(metrics))
        if self.run is not None:
            self.run.log(dict(metrics), step=step)
        if not console:  # the caller shows its own progress
            return
        shown = "  ".join(f"{k}={_fmt(metrics[k])}" for k in _CONSOLE_KEYS if k in metrics)
        tqdm.write(f"step {step:>4}  {shown}")

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"
