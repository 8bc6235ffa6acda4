"""What a run remembers of its config: the settings a resume must keep, and the resolved config of every start.

**Protected settings.** Each checkpoint's `state.json` stores the values of the settings below and their hash
(`protected_settings`, `settings_hash`). A resume that would change one is refused before Ray starts
(`check_resume`), naming each key with its value in the checkpoint and now; `resume_accept_changes=true` takes the
new values (each change is logged and printed) and the next checkpoint records them. Protected are the settings that
break a resume or silently make it another experiment: the model and its dtype, the trainers' optimisation and
sharding (lr, weight decay, clipping, ZeRO stage, world size; the critic's only when there is one), the policy
loss (its mode, clips, dual clip, aggregation) and entropy bonus, the rollout's sampling (max_new_tokens,
temperature, top_p), the reward (class, kwargs, judge model), every `algo.*`, `data.*` and `env.*` key, and the
seed. Not protected: how long and how often (steps, save_every, keep_checkpoints), where (output_dir), and how it
runs (ray.*, tracking.*, placement.*, timeouts, num_cpus, micro-batch sizes, engine counts and memory), eval.*,
and the resume flags.

**Saved configs.** The resolved config is written once the run has started (its roles placed and up, a checkpoint
restored), so a run that fails to start leaves the earlier record alone, and nothing is ever overwritten:

    output_dir/config.yaml                          the first run that started in output_dir
    output_dir/configs/<N>-<UTC time>-<hash>.yaml   each later start whose resolved config differs from the newest
                                                    one recorded: N = 002, 003, ... in the order they started,
                                                    e.g. configs/002-20261130T142501Z-1a2b3c4d5e6f.yaml (<hash>:
                                                    `config_files.config_hash`)

A restart with the newest recorded config (a resume after preemption) adds no file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinical_rl.config import RunConfig
from clinical_rl.config_files import config_hash, dump_config

if TYPE_CHECKING:
    from clinical_rl.rl.checkpoint import Checkpoint

log = logging.getLogger(__name__)

_TRAINER = ("lr", "weight_decay", "max_grad_norm", "zero_stage", "world_size")
PROTECTED: tuple[str, ...] = (
    "seed", "model.path", "model.dtype",
    *(f"policy.{k}" for k in (*_TRAINER, "clip_eps_low", "clip_eps_high", "entropy_coef", "loss_mode", "dual_clip_c",
                               "loss_agg_mode")),
    "rollout.max_new_tokens", "rollout.temperature", "rollout.top_p",
    "reward.cls", "reward.kwargs", "reward.judge_engine.model",
    "algo", "data", "env",
)
CRITIC_PROTECTED: tuple[str, ...] = tuple(
    f"critic.{k}" for k in (*_TRAINER, "clip_value", "value_coef", "init_from"))
CONFIG_FILE = "config.yaml"
CONFIGS_DIR = "configs"
_NOT_SET = object()


def protected_settings(cfg: RunConfig) -> dict[str, Any]:
    """Dotted key -> value of every protected setting of `cfg`, sections flattened to their leaves, as JSON
    stores them (so a value read back from `state.json` compares equal)."""
    tree = cfg.model_dump(mode="json")
    settings: dict[str, Any] = {}
    for key in PROTECTED + (CRITIC_PROTECTED if cfg.algo.use_critic else ()):
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None  # under an unset section (judge_engine: null)
        settings |= _flatten(key, node)
    return json.loads(json.dumps(settings))


def _flatten(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {key: value}
    return {k: v for name, child in value.items() for k, v in _flatten(f"{key}.{name}", child).items()}


def settings_hash(settings: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of `settings` (keys sorted), as `config_files.config_hash` names configs."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Change:
    """A protected setting whose value differs between a checkpoint and the config now."""

    key: str
    recorded: Any  # _NOT_SET when the checkpoint has no such key
    now: Any  # _NOT_SET when the config now has no such key

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.recorded)} in the checkpoint, {_show(self.now)} now"


def _show(value: Any) -> str:
    return "not set" if value is _NOT_SET else json.dumps(value, ensure_ascii=False)


def changed_settings(recorded: dict[str, Any], now: dict[str, Any]) -> list[Change]:
    """Every key whose value differs (or that only one side has), in the order of `now`, then the keys only
    `recorded` has."""
    keys = [*now, *(k for k in recorded if k not in now)]
    return [Change(k, recorded.get(k, _NOT_SET), now.get(k, _NOT_SET)) for k in keys
            if recorded.get(k, _NOT_SET) != now.get(k, _NOT_SET)]


def check_resume(cfg: RunConfig, checkpoint: Checkpoint | None) -> None:
    """Compare the protected settings of `cfg` with those `checkpoint` was saved with (nothing to do without one).
    A checkpoint of an older version records none: a warning, and the resume proceeds. With
    `cfg.resume_accept_changes`, each change is logged and printed and the resume proceeds.

    Raises:
        ValueError: a protected setting changed and the changes are not accepted; the message names the
            checkpoint's state.json, every changed key with both values, and how to accept or start over.
    """
    if checkpoint is None:
        return
    state, where = checkpoint.state, checkpoint.state_file
    if state.settings is None:
        _say(f"{where} records no settings (a checkpoint of an older version): the resume cannot check that the "
             "settings it was trained with are unchanged; resuming")
        return
    changes = changed_settings(state.settings, protected_settings(cfg))
    if not changes:
        return
    if not cfg.resume_accept_changes:
        raise ValueError(
            f"{where}: resuming would change settings the checkpoint was trained with:\n  "
            + "\n  ".join(map(str, changes))
            + "\nto continue with the new settings set resume_accept_changes=true (each change is logged); to start "
            "over set resume=false or choose another output_dir")
    for change in changes:
        _say(f"resume: {change} (accepted: resume_accept_changes=true)")


def _say(message: str) -> None:
    """A warning in the log and on the console: the `ppo` command does not configure logging."""
    log.warning("%s", message)
    print(f"warning: {message}", flush=True)


def record_config(output_dir: Path, cfg: RunConfig) -> Path | None:
    """Write the resolved config of a run that has started, beside the earlier ones (module docstring); returns
    the file written, or None when the newest recorded config is this one."""
    text = dump_config(cfg)
    first = output_dir / CONFIG_FILE
    # numbered, not only timed: two starts within one second (or a clock set back) still sort in start order
    later = sorted((output_dir / CONFIGS_DIR).glob("[0-9]*-*.yaml"), key=lambda p: int(p.name.split("-", 1)[0]))
    newest = later[-1] if later else first
    if newest.is_file() and newest.read_text(encoding="utf-8") == text:
        return None
    if not first.exists():
        path = first
    else:
        number = int(later[-1].name.split("-", 1)[0]) + 1 if later else 2
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = output_dir / CONFIGS_DIR / f"{number:03d}-{stamp}-{config_hash(cfg)}.yaml"
        path.parent.mkdir(exist_ok=True)
    with path.open("x", encoding="utf-8") as f:  # "x": never over a file, even one written in the same second
        f.write(text)
    return path
