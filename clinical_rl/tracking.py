"""Metrics: W&B (offline unless configured online with a key in the environment), a JSONL file, the console,
phase timers."""

from __future__ import annotations

import json
import math
import netrc
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


WANDB_LOGIN_HELP = ("online needs WANDB_API_KEY in the environment (or `wandb login`); set tracking.wandb_mode=offline "
                    "to sync later")


def wandb_logged_in() -> bool:
    """W&B can log in: WANDB_API_KEY is set, or `wandb login` stored a key in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def require_wandb_login(cfg: TrackingConfig) -> None:
    """Raises ValueError naming tracking.wandb_mode when it is online and W&B cannot log in."""
    if cfg.wandb_mode == "online" and not wandb_logged_in():
        raise ValueError(f"tracking.wandb_mode: {WANDB_LOGIN_HELP}")


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
    """Logs each step's metrics to W&B and to `metrics_file`, and prints a compact line."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, config: Mapping[str, Any],
                 resume_id: str | None = None, metrics_file: Path | None = None) -> None:
        """`resume_id`: the W&B run a resumed training continues (its later steps append to the same curves).
        `metrics_file`: JSONL, one `{"step": N, <metric>: value, ...}` line per `log` call (non-finite values as
        null), started empty; `restore` rewrites it from a checkpoint's history."""
        require_wandb_login(cfg)
        self.run = None
        if cfg.wandb_mode != "disabled":
            import wandb

            run_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=cfg.project, name=cfg.run_name, mode=cfg.wandb_mode, dir=str(run_dir), config=dict(config),
                id=resume_id, resume="allow" if resume_id else None,
            )
        self.history: list[dict[str, float]] = []
        self.metrics_file = metrics_file
        if metrics_file is not None:
            metrics_file.parent.mkdir(parents=True, exist_ok=True)
            metrics_file.write_text("")

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    @property
    def location(self) -> str:
        """Where the W&B run lives: its local directory offline, its URL online."""
        if self.run is None:
            return "W&B disabled"
        return self.run.url or str(Path(self.run.dir).parent)

    def restore(self, history: list[dict[str, float]]) -> None:
        """Continue after a checkpoint whose history holds steps 1..len(history), one entry each."""
        self.history = [dict(h) for h in history]
        if self.metrics_file is not None:
            self.metrics_file.write_text("".join(_json_line(step, h) for step, h in enumerate(history, start=1)))

    def log(self, metrics: Mapping[str, float], step: int, console: bool = True) -> None:
        self.history.append(dict(metrics))
        if self.metrics_file is not None:
            with self.metrics_file.open("a") as f:
                f.write(_json_line(step, metrics))
        if self.run is not None:
            self.run.log(dict(metrics), step=step)
        if not console:  # the caller shows its own progress
            return
        shown = "  ".join(f"{k}={_fmt(metrics[k])}" for k in _CONSOLE_KEYS if k in metrics)
        tqdm.write(f"step {step:>4}  {shown}")

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _json_line(step: int, metrics: Mapping[str, float]) -> str:
    values = {k: v if math.isfinite(v) else None for k, v in metrics.items()}
    return json.dumps({"step": step, **values}, ensure_ascii=False) + "\n"


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows `Tracker` wrote to a `metrics.jsonl`: `{"step": N, key: value or None}` each, in file order.

    Raises:
        ValueError: a line that is not a JSON object with a `step` (naming the file and line).
    """
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON: {err}") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"{path}:{number}: expected an object with a 'step'")
        rows.append(row)
    return rows
