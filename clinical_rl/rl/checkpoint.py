"""Resumable PPO runs: what a checkpoint holds, how it is written so a kill never corrupts it, how a run resumes.

    output_dir/checkpoints/step_N/policy/      DeepSpeed: weights, optimizer, scheduler (ZeRO shards per rank)
    output_dir/checkpoints/step_N/critic/      the same for the critic (absent under GRPO)
    output_dir/checkpoints/step_N/hf/          the policy in HF format, to evaluate or serve any checkpoint
    output_dir/checkpoints/step_N/state.json   step, data order, metric history, W&B run id, the protected
                                               settings and their hash (written last)
    output_dir/checkpoints/latest              "step_N", replaced atomically once state.json is in place
    output_dir/config.yaml, configs/*.yaml     the resolved config of each start (`config_record`)

A kill during a save leaves `latest` on the previous checkpoint; checkpoints older than the newest `keep` are
deleted only after `latest` has moved. Resuming restores both trainers (weights and optimizer), pushes the restored
policy into the rollout engines, and continues the data order and the W&B run where the checkpoint left them.
Generation is not bit-identical to an uninterrupted run: vLLM-CPU cannot seed single requests, so the engines'
sampling streams restart. A resume that would change a protected setting (`config_record.PROTECTED`: model, lr,
ZeRO stage, world sizes, algo.*, data.*, reward, seed, ...) is refused before Ray starts unless
`resume_accept_changes=true`; a `state.json` of an older version, without settings, resumes with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clinical_rl.rl.roles import Roles

log = logging.getLogger(__name__)

LATEST = "latest"
STATE = "state.json"


@dataclass(frozen=True)
class DriverState:
    """The controller's side of a checkpoint; the trainers' side is in DeepSpeed's files next to it."""

    step: int
    sampler: dict[str, Any]
    history: list[dict[str, float]]
    wandb_id: str | None
    optimizer_steps: dict[str, int]  # per trainer, as the engines counted them when saved
    # `config_record.protected_settings` of the run that saved it, and their hash; None in older state.json files
    settings: dict[str, Any] | None = None
    settings_hash: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A saved step: its directory (trainers' files, HF policy, driver state) and the driver state read back."""

    directory: Path
    state: DriverState

    @property
    def state_file(self) -> Path:
        return self.directory / STATE


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    """The checkpoint `latest` points to, or None when the run has none yet.

    Raises:
        FileNotFoundError: `latest` names a checkpoint without its state.json.
        ValueError: state.json is not a checkpoint state (naming the file).
    """
    root = checkpoints_dir(output_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    directory = root / pointer.read_text().strip()
    state_file = directory / STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{pointer} names {directory.name}, which has no {STATE}: delete {pointer} to start "
                                f"over, or point it at an earlier complete checkpoint")
    try:
        return Checkpoint(directory, DriverState(**json.loads(state_file.read_text())))
    except (ValueError, TypeError) as err:  # state.json is written atomically: only a hand edit breaks it
        raise ValueError(f"{state_file}: not a checkpoint state ({err}); point {pointer} at an earlier complete "
                         "checkpoint, or set resume=false to start over") from None


def save_checkpoint(output_dir: str | Path, roles: Roles, state: DriverState, keep: int) -> Path:
    """Write step `state.step` (trainers, HF policy, driver state), move `latest` to it, prune old ones."""
    import ray

    root = checkpoints_dir(output_dir)
    directory = root / f"step_{state.step}"
    shutil.rmtree(directory, ignore_errors=True)  # a save the previous run did not finish
    refs = [rank.save_checkpoint.remote(str(directory), "policy") for rank in roles.policy]
    refs += [rank.save_checkpoint.remote(str(directory), "critic") for rank in roles.critic]
    ray.get(refs)
    roles.save_policy(directory / "hf")
    steps = {"policy": ray.get(roles.policy[0].optimizer_steps.remote())}
    if roles.critic:
        steps["critic"] = ray.get(roles.critic[0].optimizer_steps.remote())
    state = DriverState(**{**asdict(state), "optimizer_steps": steps})
    _write_atomic(directory / STATE, json.dumps(asdict(state)))
    _write_atomic(root / LATEST, directory.name)
    older = sorted((d for d in root.glob("step_*") if _step_of(d) < state.step), key=_step_of)
    for old in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint: %s", directory)
    return directory


def restore_trainers(roles: Roles, checkpoint: Checkpoint) -> None:
    """Load both trainers' states, check them against the driver's record, and push the policy to the engines."""
    import ray

    directory = str(checkpoint.directory)
    loaded = {"policy": ray.get([rank.load_checkpoint.remote(directory, "policy") for rank in roles.policy])[0]}
    if roles.critic:
        loaded["critic"] = ray.get([rank.load_checkpoint.remote(directory, "critic") for rank in roles.critic])[0]
    if loaded != checkpoint.state.optimizer_steps:
        raise RuntimeError(f"{checkpoint.directory}: trainers restored {loaded} optimizer steps, the checkpoint "
                           f"recorded {checkpoint.state.optimizer_steps}")
    roles.sync_weights()


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
